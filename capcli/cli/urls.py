"""``capcli url-list FILE|-``: caption the images behind a list of URLs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import click

from capcli.captioning import CaptionSettings, run_captioning
from capcli.cli import main
from capcli.cli.fetchopts import fetch_from, fetch_options
from capcli.cli.options import EXIT_CODES_HELP, caption_options
from capcli.errors import ExitStatus
from capcli.sources import Item
from capcli.urllist import FORMATS, UrlList

# Downloads wait on the network, not the CPU: many more of them than cores
# keep the model fed when each response takes a while.
URL_WORKERS = 16


def _no_sidecar(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``caption --sidecar`` is a likely guess here: say why it cannot be, rather than click's "no such option"."""
    if value is not None:
        raise click.UsageError(
            "url-list cannot write --sidecar files: a URL has no folder to hold one "
            "(--save-images DIR keeps the images, -o the records)"
        )


@main.command("url-list", epilog=EXIT_CODES_HELP)
@click.argument("url_list", metavar="FILE|-", type=click.File("rb"))
@click.option(
    "--input-format",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="How FILE is laid out [auto: by suffix (.csv .tsv .jsonl), a first '{' means JSONL, else one URL per line].",
)
@click.option("--url-col", metavar="NAME", default=None, help="CSV/TSV/JSONL column holding the URL [default: url].")
@click.option("--id-col", metavar="NAME", default=None, help='Column copied into each record as "id".')
@click.option(
    "--save-images",
    metavar="DIR",
    default=None,
    help="Also keep each downloaded image, byte for byte, as DIR/<index>-<name>.<format> "
    '(the record\'s "saved" field).',
)
@click.option("--sidecar", hidden=True, expose_value=False, callback=_no_sidecar)
@fetch_options
@caption_options(workers=URL_WORKERS, workers_help="Threads downloading and decoding images ahead of the model.")
def url_list(
    url_list: BinaryIO,
    input_format: str,
    url_col: str | None,
    id_col: str | None,
    **options: object,
) -> ExitStatus:
    """Download and caption the images a list of URLs points to.

    \b
    FILE (- for stdin) holds one http(s) URL per line (blank lines and
    lines starting with # are skipped), or is a CSV/TSV file with a header
    row or a JSONL file, with the URL in --url-col. Records come in list
    order with the URL as "source"; a URL that cannot be fetched or is not
    an image becomes an error record naming why, and the run goes on.

    \b
    Addresses that are not public (loopback, private, link-local such as
    169.254.169.254, shared, multicast, reserved) are refused, on every
    redirect too, unless --allow-private-network is given.

    \b
    Examples:
      capcli url-list urls.txt -o captions.jsonl
      capcli url-list photos.csv --url-col image_url --id-col sku -o out.csv
      psql -Atc 'select url from photos' | capcli url-list - --workers 32
      capcli url-list urls.txt --save-images images/ -o captions.jsonl
    """
    fetch = fetch_from(options)
    name = str(getattr(url_list, "name", "-"))  # stdin: "<stdin>", no suffix
    entries = UrlList(url_list, name=name, fmt=input_format, url_col=url_col, id_col=id_col)  # UrlListError: usage
    extra = ("id",) if id_col else ()
    return run_captioning(
        _items(entries, with_id=bool(id_col)), CaptionSettings(**options), fetch=fetch, extra_columns=extra
    )


def _items(entries: UrlList, *, with_id: bool) -> Iterator[Item]:
    for index, entry in enumerate(entries):
        extra = {"id": entry.id} if with_id else None
        yield Item(index, entry.source, url=entry.url, error=entry.error, extra=extra)
