"""``capcli bench``: images/s, stage times and peak memory of the limit, capcli and the tutorial way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from capcli.atomic import atomic_write_text
from capcli.bundle import SEARCH_MODES
from capcli.cli import main
from capcli.cli.options import runtime_options

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the repository's example photos


def default_images() -> Path | None:
    """The repository's ``examples/`` folder (in a clone or an editable install), else None."""
    return EXAMPLES if EXAMPLES.is_dir() else None


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, not {value!r}") from None
    if w < 1 or h < 1:
        raise click.BadParameter("sizes must be positive")
    return w, h


@main.command("bench")
@click.option(
    "--model",
    metavar="PATH|NAME",
    default=None,
    help="Model bundle directory or model name [default: $CAPCLI_MODEL, then the packaged model].",
)
@click.option(
    "--images",
    "images",
    metavar="DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of photos [default: the repository's examples/ folder, when capcli runs from a clone].",
)
@click.option(
    "-n",
    "n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    metavar="N",
    help="Images per scenario (the folder's first N; cycled when it has fewer).",
)
@click.option(
    "--checkpoint",
    metavar="PATH",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="The model's PyTorch checkpoint, for the tutorial-way scenarios (skipped without it).",
)
@runtime_options(
    search=False,
    workers=None,
    workers_help="Reader threads.",
    device_help="Where the ONNX model runs (the tutorial way runs PyTorch on the CPU).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="onnxruntime intra-op threads per lane [default: physical cores / lanes].",
)
@click.option(
    "--lanes", type=click.IntRange(min=1), default=None, metavar="N", help="Batches captioned at once [default: 2]."
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="R",
    help="Run the scenarios round-robin R times and report each one's fastest round (for busy machines).",
)
@click.option("--big/--no-big", default=True, show_default=True, help="The phone-size JPEG scenario.")
@click.option(
    "--big-size",
    default="4032x3024",
    show_default=True,
    metavar="WxH",
    callback=lambda c, p, v: _size(v),
    help="Size of the generated phone-size JPEGs.",
)
@click.option("--memory", is_flag=True, help="Also measure peak memory end to end for 1,000 and 20,000 inputs (slow).")
@click.option(
    "--memory-counts", default="1000,20000", show_default=True, metavar="A,B", help="Input counts compared by --memory."
)
@click.option(
    "--json",
    "json_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write every figure as JSON to FILE.",
)
@click.option(
    "--search",
    "search_mode",
    type=click.Choice([*SEARCH_MODES, "both"]),
    default="auto",
    show_default=True,
    help="The capcli scenarios' decode loop (see `capcli caption --search`); both: numpy, plus greedy and "
    "beam 3 by the search graph, round-robin with the others (their ratio to numpy is printed).",
)
def bench_command(
    model: str | None,
    images: str | None,
    n: int,
    checkpoint: str | None,
    batch_size: int,
    workers: int | None,
    device: str,
    precision: str,
    threads: int | None,
    lanes: int | None,
    rounds: int,
    big: bool,
    big_size: tuple[int, int],
    memory: bool,
    memory_counts: str,
    json_path: str | None,
    search_mode: str,
) -> None:
    """Measure capcli against its limit and the tutorial way, in one run.

    \b
    Scenarios, each in a fresh process on the same model and images:
      limit     the encoder alone on ready-made input tensors
      read      the photos read and preprocessed by capcli's reader threads alone
      capcli    files on disk -> JSONL records, greedy and beam 3;
                also on 4032x3024 JPEGs generated from the photos
      tutorial  the PyTorch checkpoint, one image at a time, eager (--checkpoint)
      memory    peak memory for 1,000 vs 20,000 inputs (--memory)
    Prints images/s, per-image stage times, peak memory (RSS high-water
    mark), the ratios between scenarios with their targets, and the machine.

    \b
    Example:
      capcli bench --model models/f8k --checkpoint runs/f8k/best.pt -n 200 --json bench.json
    """
    from capcli.bench import BenchConfig, run_bench
    from capcli.bench.report import render
    from capcli.bundle import resolve_bundle_path

    folder = Path(images) if images else default_images()
    if folder is None:
        raise click.UsageError("no example photos here (they come with a clone of the repository): pass --images DIR")
    try:
        counts = tuple(int(c) for c in memory_counts.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 2 or min(counts) < 1:
        raise click.BadParameter("expected two positive counts, e.g. 1000,20000", param_hint="'--memory-counts'")
    cfg = BenchConfig(
        model=str(resolve_bundle_path(model)[0]),  # a name resolved here: an unknown one exits 2 before any worker
        images=folder,
        n=n,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        threads=threads,
        lanes=lanes,
        checkpoint=checkpoint,
        big=big,
        big_size=big_size,
        memory=memory,
        memory_counts=counts,
        rounds=rounds,
        search=search_mode,
    )  # type: ignore[arg-type]
    report = run_bench(cfg, say=lambda line: click.echo(line, err=True))
    render(report)
    if json_path:
        _write_json(Path(json_path), report.to_dict())
        click.echo(f"figures written to {json_path}", err=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
