"""``capcli export``: training checkpoint -> ONNX bundle, checked against PyTorch."""

from __future__ import annotations

import shlex

import click

from capcli.cli import main
from capcli.errors import CapcliError


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (created; replaced only with --force).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(13, 20), help="ONNX opset.")
@click.option("--tolerance", default=1e-3, show_default=True, type=click.FloatRange(min=0.0),
              help="Largest max-abs difference between onnxruntime and PyTorch that passes.")
@click.option("--check-images", "images", multiple=True, type=click.Path(exists=True),
              help="Photos or folders for the parity check (up to 3 images; repeatable). "
                   "Default: the training data set's images/ recorded in the checkpoint, else random inputs.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at the output path.")
def export_command(checkpoint: str, out_dir: str, opset: int, tolerance: float, images: tuple[str, ...],
                   force: bool) -> None:  # fmt: skip
    """Export CHECKPOINT (a `capcli train` checkpoint) as a model bundle.

    Writes encoder.onnx, decoder.onnx (one decoding step) and model.json into a
    temporary directory beside the output, compares onnxruntime with PyTorch on
    the same inputs (encoder outputs and several decoder steps), and moves the
    bundle into place only when every max abs difference is within --tolerance.
    Exit 1 when the check fails; nothing is written then.
    """
    try:
        from export import export_checkpoint
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"export needs the training extra ({exc.name} is missing): pip install 'capcli[train]'"
        ) from None

    command = ["capcli", "export", checkpoint, "-o", out_dir, "--opset", str(opset), "--tolerance", str(tolerance)]
    for image in images:
        command += ["--check-images", image]
    try:
        path = export_checkpoint(
            checkpoint, out_dir, opset=opset, tolerance=tolerance, images=images, overwrite=force,
            command=shlex.join(command),
            report=lambda r: click.echo("\n".join(r.lines()), err=True),
        )  # fmt: skip
    except CapcliError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"bundle written to {path}", err=True)
