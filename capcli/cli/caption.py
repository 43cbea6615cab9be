"""``capcli caption INPUT...``: caption files, directories, globs, stdin lists and URLs."""

from __future__ import annotations

import os

import click

from capcli.captioning import CaptionSettings, run_captioning
from capcli.cli import main
from capcli.cli.fetchopts import fetch_from, fetch_options
from capcli.cli.options import EXIT_CODES_HELP, caption_options
from capcli.errors import ExitStatus, UsageError
from capcli.sources import Walk, is_url, iter_items


@main.command("caption", epilog=EXIT_CODES_HELP)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@caption_options()
@click.option("--no-recursive", is_flag=True, help="Take only the images directly in each directory input.")
@click.option(
    "--exclude",
    metavar="GLOB",
    multiple=True,
    help="Leave out files and subdirectories of directory inputs whose name, or path under the input, "
    "matches GLOB (repeatable).",
)
@click.option(
    "--sidecar",
    metavar="SUFFIX",
    default=None,
    help="Also write each caption to a text file beside its image (.txt: photo.jpg -> photo.txt). "
    "Without -o, no records are written (-o - asks for them on stdout).",
)
@click.option(
    "--skip-existing", is_flag=True, help="With --sidecar: leave the images that already have one (not even read)."
)
@fetch_options
def caption(inputs: tuple[str, ...], no_recursive: bool, exclude: tuple[str, ...], **options: object) -> ExitStatus:
    """Caption images; one JSONL/CSV record per input, in input order.

    \b
    INPUT is an image file, a directory (walked recursively unless
    --no-recursive, sorted, image suffixes only, less --exclude), a quoted
    glob ('shots/**/*.png'), an http(s) URL, or - for newline-separated
    paths read from stdin. Inputs that cannot be read become error records
    and the run goes on.

    \b
    Examples:
      capcli caption ./photos -o captions.jsonl
      capcli caption 'shots/**/*.png' --format csv > captions.csv
      find . -name '*.jpg' | capcli caption - | jq -r .caption
      capcli caption ./photos -o out.csv --resume
      capcli caption ./photos --no-recursive --exclude '*_mask.png'
      capcli caption ./dataset --sidecar .txt --skip-existing
    """
    if inputs.count("-") > 1:
        raise click.UsageError("- (stdin) can be given only once")
    _check_sidecar(inputs, options)
    fetch = fetch_from(options)  # removes the download options from ``options``
    items = iter_items(inputs, on_empty=_warn_empty, walk=Walk(not no_recursive, exclude))
    return run_captioning(items, CaptionSettings(**options), fetch=fetch)


def _check_sidecar(inputs: tuple[str, ...], options: dict[str, object]) -> None:
    """Refuse what cannot have a sidecar; with --sidecar and no -o, records go nowhere (the files are the output)."""
    if not options["sidecar"]:
        if options["skip_existing"]:
            raise UsageError("--skip-existing needs --sidecar SUFFIX")
        return
    if any(is_url(spec) for spec in inputs):
        raise UsageError("--sidecar writes beside image files: URL inputs cannot have one (use -o for their records)")
    if click.get_current_context().get_parameter_source("output") is click.core.ParameterSource.DEFAULT:
        options["output"] = os.devnull


def _warn_empty(directory: str) -> None:
    """A directory input without images gives no record; say so (the exit status stays 0, as with find)."""
    click.echo(
        f"Warning: {directory}: no image files in this directory (image suffixes only, "
        "after --exclude and --no-recursive); it adds no record",
        err=True,
    )
