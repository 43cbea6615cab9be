"""``capcli review OUTPUT``: an HTML contact sheet of a caption run's records."""

from __future__ import annotations

import os

import click

from capcli.cli import main, on_interrupt


@main.command("review")
@click.argument("records", type=click.Path(exists=True, dir_okay=False), metavar="OUTPUT.jsonl|OUTPUT.csv")
@click.option(
    "-o",
    "--output",
    metavar="PAGE",
    default=None,
    help="The HTML file to write (default: the records' file name with .html).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Format of the records file (default: csv for *.csv, else jsonl).",
)
@click.option(
    "--link",
    is_flag=True,
    help="Show the original photos (their paths and URLs) instead of embedding thumbnails: "
    "a small page, but it needs the photos beside it, and URLs are loaded from their servers.",
)
@click.option(
    "--root",
    metavar="DIR",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="The folder that relative sources and attention paths are relative to (where capcli caption ran).",
)
@click.option(
    "--thumb-size",
    type=click.IntRange(16, 1024),
    default=160,
    show_default=True,
    help="Longest side of the embedded thumbnails, in pixels.",
)
@click.option(
    "--quality",
    type=click.IntRange(1, 95),
    default=70,
    show_default=True,
    help="JPEG quality of the embedded thumbnails.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads making thumbnails (default: one per CPU, at most 32).",
)
@click.option("--title", default=None, help="The page's title (default: capcli review: <file name>).")
def review_command(
    records: str,
    output: str | None,
    fmt: str | None,
    link: bool,
    root: str,
    thumb_size: int,
    quality: int,
    workers: int | None,
    title: str | None,
) -> None:
    """Write one self-contained HTML page showing every record of a caption run.

    \b
    A grid of cards in record order: thumbnail, caption, score, index,
    source, tags and attention-figure link when the records have them;
    error records as error cards with their kind and message. The page
    sorts (index, score), filters (errors only) and searches captions with
    its own inline script, needs no server and loads nothing from the
    network (except the originals of URL inputs with --link).

    \b
    Examples:
      capcli caption examples -o out.jsonl && capcli review out.jsonl -o review.html
      capcli review out.csv --link -o review.html
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from capcli.review import DEFAULT_WORKERS, read_output, write_review

    if output is None:
        output = os.path.splitext(records)[0] + ".html"
    if os.path.abspath(output) == os.path.abspath(records):
        raise click.BadParameter("the page would replace the records file", param_hint="'-o'")
    on_interrupt(f"interrupted; {output} not written")  # the page is written whole or not at all
    console = Console(stderr=True)
    rows = read_output(records, fmt)
    progress = Progress(
        TextColumn("links" if link else "thumbnails"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("", total=len(rows))
        summary = write_review(
            rows,
            output,
            link=link,
            size=thumb_size,
            quality=quality,
            workers=workers or DEFAULT_WORKERS,
            root=root,
            title=title or f"capcli review: {os.path.basename(records)}",
            progress=lambda done: progress.update(task, completed=done),
        )
    console.print(summary.line(output), highlight=False, soft_wrap=True)
