"""``capcli export``: training checkpoint -> ONNX bundle, checked against PyTorch; optionally int8."""

from __future__ import annotations

import shlex
import tempfile
from functools import partial
from pathlib import Path

import click

from capcli import store
from capcli.cli import main


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Bundle directory to write (created; replaced only with --force).",
)
@click.option("--opset", default=17, show_default=True, type=click.IntRange(13, 20), help="ONNX opset.")
@click.option(
    "--tolerance",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Largest max-abs difference between onnxruntime and PyTorch that passes.",
)
@click.option(
    "--check-images",
    "images",
    multiple=True,
    type=click.Path(exists=True),
    help="Photos or folders for the parity check (up to 3 images; repeatable). "
    "Default: the training data set's images/ recorded in the checkpoint, else random inputs.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle at the output path.")
@click.option(
    "--quantize",
    is_flag=True,
    help="Also write decoder.int8.onnx (dynamic int8 quantisation of the decoder's matrix products), "
    "which capcli prefers on CPUs. CHECKPOINT may then also be an existing bundle directory.",
)
@click.option(
    "--float16-weights",
    "float16",
    is_flag=True,
    help="Store the float graphs' weights in 16 bits (cast back to float32 when onnxruntime loads them): "
    "half the size, the same speed; how far it moves the outputs is recorded and printed. Applied last.",
)
@click.option(
    "--install",
    metavar="NAME",
    default=None,
    help="Then add the bundle to the model store as NAME (as `capcli models add` does), so that `--model NAME` "
    "chooses it; with --force an installed NAME is replaced.",
)
@click.option(
    "--trigrams-from",
    "trigram_data",
    multiple=True,
    metavar="DATASET=DIR",
    callback=lambda ctx, param, value: [_dataset_folder(v) for v in value],
    help="Also write trigrams.npy, the trigrams of the model's training text, which --unseen-trigram-penalty "
    "reads: the train split of each data set named (repeatable; DATASET as `capcli train --dataset` takes it), "
    "and coco-everyday's text-captions.csv. CHECKPOINT may then also be an existing bundle directory.",
)
@click.option(
    "--upgrade",
    is_flag=True,
    help="CHECKPOINT is an older bundle: add the search graphs (format 2 or 3, checked to caption as the numpy "
    "search), or convert a capcli 0.1 bundle (format 1), checked against the old graphs.",
)
def export_command(
    checkpoint: str,
    out_dir: str,
    opset: int,
    tolerance: float,
    images: tuple[str, ...],
    force: bool,
    quantize: bool,
    float16: bool,
    upgrade: bool,
    install: str | None,
    trigram_data: list[tuple[str, str]],
) -> None:
    """Export CHECKPOINT (a `capcli train` checkpoint) as a model bundle.

    Writes encoder.onnx, decoder.onnx (one decoding step) and model.json into a
    temporary directory beside the output, compares onnxruntime with PyTorch on
    the same inputs (encoder outputs and several decoder steps), and moves the
    bundle into place only when every max abs difference is within --tolerance.
    Exit 1 when the check fails; nothing is written then.

    \b
    With --quantize the bundle, once checked, also gets decoder.int8.onnx, the
    decoder step with int8 matrix products, which capcli uses on the CPU unless
    --precision float (CUDA keeps the float decoder); how far it moves the
    outputs (greedy captions, log-probabilities on the check images) is
    recorded in the provenance and printed. Measure its captions with
    `capcli eval --model OUT --device cpu` (and --precision float to compare).

    \b
    With --upgrade, CHECKPOINT is a capcli 0.1 bundle; its graphs are
    rewritten for this capcli (the same weights: keys laid out per region
    last, the decoder reading each image's context once), compared with the
    old graphs on the check images, and written only within --tolerance.
    A format 2 or 3 bundle gains the search graphs (the decode loop as one
    graph over each decoder, their weights read from the decoder files),
    written only when they caption the check images as the numpy search does.

    \b
    With --trigrams-from, the bundle also gets trigrams.npy: every trigram
    of the sentences the model was trained on, as its word ids, for
    `capcli caption --unseen-trigram-penalty` (a bundle's table is replaced).
    """
    try:
        from capcli.export import export_checkpoint
        from capcli.export.quantize import quantize_bundle
        from capcli.export.trigrams import trigram_bundle
        from capcli.export.upgrade import upgrade_bundle
        from capcli.export.weights import float16_bundle
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"export needs the training extra ({exc.name} is missing): pip install 'capcli[train]'"
        ) from None

    command = ["capcli", "export", checkpoint, "-o", out_dir, "--opset", str(opset), "--tolerance", str(tolerance)]
    for image in images:
        command += ["--check-images", image]
    command += ["--quantize"] * quantize + ["--float16-weights"] * float16 + ["--upgrade"] * upgrade
    for dataset, folder in trigram_data:
        command += ["--trigrams-from", f"{dataset}={folder}"]
    recorded = shlex.join(command)
    is_bundle = Path(checkpoint).is_dir()
    if is_bundle and not (quantize or float16 or upgrade or trigram_data):
        raise click.UsageError(
            "CHECKPOINT is a directory: only --quantize, --float16-weights, --upgrade or --trigrams-from make a "
            "bundle from a bundle"
        )
    if upgrade and not is_bundle:
        raise click.UsageError("--upgrade converts a bundle directory, not a checkpoint (export it anew instead)")
    if install is not None:  # refused before the export's minutes, not after
        store.refuse_existing(store.check_name(install), force)

    def export_to(where: str | Path) -> Path:
        if upgrade:
            return upgrade_bundle(
                checkpoint, where, images=images, tolerance=tolerance, overwrite=force, command=recorded
            )
        return export_checkpoint(
            checkpoint,
            where,
            opset=opset,
            tolerance=tolerance,
            images=images,
            overwrite=force,
            command=recorded,
            report=lambda r: click.echo("\n".join(r.lines()), err=True),
        )

    # capcli errors become "Error: ..." and exit 1 in capcli.cli.Command.
    # Each stage writes the next one's source; only the last writes the output.
    from_bundle = is_bundle and not upgrade
    kept = {"overwrite": force, "command": recorded}
    transforms = [
        t
        for t, on in (
            (partial(quantize_bundle, images=images, **kept), quantize),
            (partial(float16_bundle, images=images, **kept), float16),
            (partial(trigram_bundle, data=trigram_data, **kept), bool(trigram_data)),
        )
        if on
    ]
    Path(out_dir).absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out_dir).absolute().parent, prefix=".export-") as tmp:
        outs = [Path(tmp) / str(i) for i in range(len(transforms) - from_bundle)] + [Path(out_dir)]
        path = Path(checkpoint) if from_bundle else export_to(outs.pop(0))
        for transform in transforms:
            path = transform(path, outs.pop(0))
    if upgrade:
        _echo_upgrade(path)
    if quantize:
        _echo_quantization(path)
    if float16:
        _echo_float16(path)
    if trigram_data:
        _echo_trigrams(path)
    click.echo(f"bundle written to {path}", err=True)
    if install is not None:
        from capcli.bundle import install_bundle

        click.echo(f"installed as {install!r} at {install_bundle(install, path, force=force)}", err=True)


def _dataset_folder(value: str) -> tuple[str, str]:
    """``DATASET=DIR`` -> (DATASET, DIR); BadParameter naming what is wrong."""
    from capcli.datasets import DATASETS

    dataset, sep, folder = value.partition("=")
    if not sep or dataset not in DATASETS or not Path(folder).exists():
        raise click.BadParameter(
            f"{value!r}: expected DATASET=DIR with DATASET one of {', '.join(DATASETS)} and DIR a data set folder"
        )
    return dataset, folder


def _echo_trigrams(path: Path) -> None:
    import json

    t = json.loads((path / "model.json").read_text(encoding="utf-8"))["provenance"]["trigrams"]
    click.echo(f"trigram table: {t['trigrams']:,} trigrams of {t['sentences']:,} training sentences", err=True)


def _echo_upgrade(path: Path) -> None:
    import json

    upgrade = json.loads((path / "model.json").read_text(encoding="utf-8"))["provenance"]["upgrade"]
    if "search_parity" in upgrade:  # format 2 to 4: search graphs (re)written
        checks = upgrade["search_parity"]["checks"]
        rule = {True: "no repeated words", False: "repeats allowed"}  # checks written before session 19 lack the key
        same = ", ".join(
            f"{c['precision']} beam {c['beam']} {rule[bool(c.get('no_repeated_words'))]}: {c['same']}/{c['captions']}"
            for c in checks
        )
        click.echo(
            f"upgraded from format {upgrade['from_format']}: search graphs written; their captions and scores equal "
            f"the numpy search's on {upgrade['search_parity']['inputs']} ({same})",
            err=True,
        )
        return
    parity = upgrade["parity"]
    worst = max(parity["max_abs_diff"].items(), key=lambda kv: kv[1])
    click.echo(
        f"upgraded from format 1; new vs old graphs on {parity['inputs']}, {parity['steps']} decoder steps: "
        f"largest difference {worst[1]:.1e} ({worst[0]})",
        err=True,
    )


def _echo_quantization(path: Path) -> None:
    import json

    meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
    c = meta["provenance"]["quantization"]["comparison"]
    click.echo(
        f"int8 vs float on {c['inputs']}: {100 * c['greedy_captions_identical']:.0f}% identical greedy "
        f"captions, first-step log-probabilities within {c['first_step_logprobs_max_abs_diff']:.3f}",
        err=True,
    )


def _echo_float16(path: Path) -> None:
    import json

    c = json.loads((path / "model.json").read_text(encoding="utf-8"))["provenance"]["weights"]["comparison"]
    click.echo(
        f"16-bit vs 32-bit weights on {c['inputs']}: {100 * c['greedy_captions_identical']:.0f}% identical greedy "
        f"captions, features within {c['features_max_abs_diff']:.3f}, first-step log-probabilities within "
        f"{c['first_step_logprobs_max_abs_diff']:.3f}",
        err=True,
    )
