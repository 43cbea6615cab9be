"""``capcli train``: a captioned image data set -> checkpoints in a run folder."""

from __future__ import annotations

import os

import click

from capcli.cli import main, on_interrupt
from capcli.cli.options import dataset_options, device_option


def training_extra_missing(exc: ModuleNotFoundError) -> click.ClickException:
    """The error of a training command run without the train extra installed."""
    return click.ClickException(
        f"training needs the training extra ({exc.name} is missing): pip install 'capcli[train]'"
    )


def resume_hint(out: str) -> str:
    """What a training command says when Ctrl-C stops it: last.pt in the run folder holds the last whole epoch."""
    return f"interrupted; continue with the same command plus --resume (--out {out})"


def _list_backbones(ctx: click.Context, param: click.Parameter, pattern: str | None) -> None:
    if pattern is None or ctx.resilient_parsing:
        return
    from capcli.train.backbones import DEFAULT, catalogue

    groups = catalogue(pattern)
    if not groups:
        click.echo(f"no backbone name matches {pattern!r}", err=True)
    for group in groups:
        click.echo(group.source)
        for row in group.rows:
            default = "  (default)" if row.name == DEFAULT else ""
            click.echo(f"  {row.name:<44} {row.weights}{default}")
        if group.note:
            click.echo(f"  {group.note}")
    ctx.exit(0)


def _check_backbone(ctx: click.Context, param: click.Parameter, name: str) -> str:
    try:
        from capcli.train.backbones import check_name
    except ModuleNotFoundError:  # no torch: the command body says which extra to install
        return name
    try:
        check_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return name


@main.command("train")
@click.option(
    "--list-backbones",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[PATTERN]",
    is_eager=True,
    expose_value=False,
    callback=_list_backbones,
    help="List backbone names and whether their weights are here (PATTERN: e.g. 'timm:convnext*'), then exit.",
)
@dataset_options
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Run folder: checkpoints, metrics.jsonl, curves.png, train.json.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt with its saved settings.")
@click.option(
    "--backbone",
    default="efficientnet-lite2",
    show_default=True,
    callback=_check_backbone,
    help="efficientnet-lite0|1|2, torchvision:<model> (e.g. torchvision:resnet50), timm:<model> "
    "(e.g. timm:inception_resnet_v2; needs the timm extra) or tiny; see --list-backbones.",
)
@click.option(
    "--no-pretrained",
    is_flag=True,
    help="Random backbone weights instead of ImageNet ones (nothing to install or download).",
)
@click.option("--decoder", type=click.Choice(["gru", "lstm"]), default="gru", show_default=True)
@click.option("--hidden-dim", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--embed-dim", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--attention-dim", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--feature-dim", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.5, show_default=True)
@click.option(
    "--finetune-blocks",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Train the backbone's top K stages too (at --backbone-lr); the rest stays frozen and cached.",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Start from this checkpoint's model and vocabulary (e.g. runs/f8k/best.pt); its architecture "
    "options win over the command line's.",
)
@click.option(
    "--objective",
    type=click.Choice(["xent", "cider"]),
    default="xent",
    show_default=True,
    help="xent: cross-entropy with teacher forcing; cider: self-critical training on CIDEr-D "
    "(needs --init; use a learning rate around 2e-5).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Captions sampled per image by --objective cider (each one's baseline is the others' mean).",
)
@click.option(
    "--score-end/--no-score-end",
    default=True,
    show_default=True,
    help="--objective cider: the reward counts the caption's end as a word, so captions cut off "
    "mid-phrase earn less (--no-score-end: plain CIDEr-D).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Captions per step: the global batch, split across the processes under torchrun.",
)
@click.option(
    "--batch-by",
    type=click.Choice(["auto", "caption", "image"]),
    default="auto",
    show_default=True,
    help="Shuffle captions, or images with all their captions together (auto: image when fine-tuning).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0.0, min_open=True),
    default=4e-4,
    show_default=True,
    help="Peak learning rate of the one-cycle schedule.",
)
@click.option(
    "--backbone-lr",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Peak learning rate of fine-tuned backbone stages.",
)
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=0.01, show_default=True)
@click.option(
    "--warmup",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of the steps spent rising to the peak learning rate.",
)
@click.option(
    "--clip",
    type=click.FloatRange(min=0.0, min_open=True),
    default=5.0,
    show_default=True,
    help="Gradient norm clipping.",
)
@click.option("--label-smoothing", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True)
@click.option(
    "--attention-penalty",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Weight of the doubly stochastic attention penalty.",
)
@click.option(
    "--min-count",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Keep words seen at least this often in the training captions.",
)
@click.option(
    "--max-len",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Longest caption in words; longer training captions are cut.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Stop after this many epochs without a better dev CIDEr (0: never).",
)
@click.option(
    "--dev-beam",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Beam width of the per-epoch dev captions (1: greedy).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Debug: only the first N images of each split.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option(help="Under torchrun each process takes cuda:LOCAL_RANK (auto|cuda), or the CPU (gloo).")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Processes decoding images for the feature cache.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch [default: torch's choice]; 1 can be faster on a busy machine.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Feature cache folder [default: ~/.cache/capcli/features].",
)
def train_command(resume: bool, no_pretrained: bool, **options: object) -> None:
    """Train a captioning model on a data set's train split, selecting on its dev split.

    \b
    Frozen backbone features are computed once and cached; each epoch prints
    the training loss and the dev BLEU-4 / CIDEr (Java-free quick scores of
    captions decoded like the runtime does). best.pt (best dev CIDEr) and
    last.pt are written after every epoch; --resume continues a stopped run.

    \b
    Example:
      capcli train --dataset flickr8k --data data/flickr8k --out runs/f8k
      capcli export runs/f8k/best.pt -o models/f8k

    \b
    Then self-critical training on CIDEr-D, starting from that model:
      capcli train --dataset flickr8k --data data/flickr8k --out runs/f8k-scst \\
        --init runs/f8k/best.pt --objective cider --lr 2e-5 --epochs 10

    \b
    On 4 GPUs (DistributedDataParallel; rank 0 writes the run folder):
      torchrun --standalone --nproc_per_node 4 -m capcli train --dataset flickr8k \\
        --data data/flickr8k --out runs/f8k
    """
    try:
        from capcli.train.loop import TrainOptions, train
    except ModuleNotFoundError as exc:
        raise training_extra_missing(exc) from None
    first = os.environ.get("RANK", "0") == "0"  # under torchrun: said once, not by every process
    on_interrupt(resume_hint(str(options["out"])) if first else "")
    train(TrainOptions(pretrained=not no_pretrained, **options), resume=resume)  # type: ignore[arg-type]
