"""``capcli train-grounded``: the everyday-photo recipe (a trained encoder + tagger, a decoder on photos and text)."""

from __future__ import annotations

import click

from capcli.cli import main, on_interrupt
from capcli.cli.train import resume_hint, training_extra_missing


def _repeat(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, int]:
    try:
        pairs = [part.split("=") for part in value.split(",")]
        repeat = {name.strip(): int(times) for name, times in pairs}
    except ValueError:
        raise click.BadParameter("expected NAME=TIMES,... e.g. flickr8k=1,everyday=6,text=1") from None
    unknown = set(repeat) - {"flickr8k", "everyday", "text"}
    if unknown or any(t < 0 for t in repeat.values()):
        raise click.BadParameter("names are flickr8k, everyday and text; times are whole numbers >= 0")
    return repeat


def _objects(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from capcli.hallucination import OBJECTS

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in OBJECTS]
    if unknown:
        raise click.BadParameter(f"not in capcli.hallucination's object list: {', '.join(unknown)}")
    return names


@main.command("train-grounded")
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Checkpoint whose encoder (backbone, fine-tuned stages, projection) is kept, frozen.",
)
@click.option("--flickr", type=click.Path(exists=True, file_okay=False), required=True, help="Flickr8k folder.")
@click.option(
    "--everyday",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="coco-everyday folder: captions.csv, images/, text-captions.csv.",
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt with its saved settings.")
@click.option(
    "--repeat",
    default="flickr8k=1,everyday=6,text=1",
    show_default=True,
    callback=_repeat,
    help="The mix: how many times each part's captions come in one epoch.",
)
@click.option(
    "--concepts", type=click.IntRange(min=1), default=5, show_default=True, help="Top tagger classes the decoder reads."
)
@click.option(
    "--objective",
    type=click.Choice(["xent", "cider"]),
    default="xent",
    show_default=True,
    help="xent: cross-entropy with teacher forcing; cider: self-critical training on CIDEr-D, "
    "continuing --start (use a learning rate around 5e-5).",
)
@click.option(
    "--start",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A grounded checkpoint (e.g. runs/grounded/best.pt) whose decoder and vocabulary to continue.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="--objective cider: captions sampled per photo (each one's baseline is the others' mean).",
)
@click.option(
    "--hallucination-penalty",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="--objective cider: reward taken off a sampled caption per object it names that no reference of its "
    "photo mentions (photos with 5 or more references).",
)
@click.option(
    "--one-reference-objects",
    default="",
    callback=_objects,
    metavar="OBJECT,...",
    help="--hallucination-penalty also on photos with fewer references (the everyday train photos have one), "
    "for these objects only: ones a single caption seldom leaves unsaid, e.g. person,dog.",
)
@click.option(
    "--one-reference-penalty",
    type=click.FloatRange(min=0.0),
    default=None,
    help="The penalty per --one-reference-objects object on those photos [default: --hallucination-penalty].",
)
@click.option(
    "--repeat-penalty",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="--objective cider: reward taken off a sampled caption per word it says again that a caption says "
    'once (a noun, a colour, a verb: "A plate of food on a plate." pays once; articles, prepositions and '
    "the like may repeat).",
)
@click.option(
    "--unseen-trigram-penalty",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="--objective cider: reward taken off a sampled caption per trigram (its start and end included) that "
    'no training sentence has: phrasing the corpus never uses, mostly a template gone wrong ("A living room '
    'is sitting on a bed." pays for "room is sitting").',
)
@click.option(
    "--sample-said-once",
    is_flag=True,
    help="--objective cider: sampled captions say no word twice, as capcli's default decoding does, so the "
    "rewards (and penalties) act on the words that take a repeat's place.",
)
@click.option(
    "--sample-phrasing",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    metavar="W",
    help="--objective cider: draw the samples with W taken off the log-probability of each word that would make "
    "a trigram no training sentence has, so that the rewards act on the phrasing that takes its place.",
)
@click.option(
    "--xent-weight",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="--objective cider: add this times the cross-entropy of one reference per photo to the policy "
    "gradient, so that words the sampler stops drawing are not lost.",
)
@click.option(
    "--reward-df",
    type=click.Choice(["pooled", "per-set"]),
    default="pooled",
    show_default=True,
    help="--objective cider: CIDEr-D's document frequencies pooled over all training photos, or per data set "
    "(Flickr8k; COCO: the everyday photos and the caption-only sentences), as each is evaluated.",
)
@click.option(
    "--distill",
    is_flag=True,
    help="--objective cider: the cross-entropy term (--xent-weight) of each Flickr8k photo targets the --init "
    "captioner's own beam-3 caption of it, saying no word twice, instead of a reference (sequence-level knowledge "
    "distillation), so the grounded decoder learns what the Flickr8k model says about its photos.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=4e-4, show_default=True)
@click.option("--min-count", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--visual-dropout",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Share of photo captions trained without their regions.",
)
@click.option(
    "--concept-dropout",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Share of photo captions trained without their concept.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default="runs/cache",
    show_default=True,
    help="Feature cache folder.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Debug: the first N photos of each part.")
def train_grounded_command(resume: bool, **options: object) -> None:
    """Train a grounded decoder: it reads the photo's regions and the backbone's own ImageNet classes.

    \b
    The encoder of --init stays frozen; a pristine copy of the backbone's top
    stages and its ImageNet classifier become the tagger; the decoder learns
    from Flickr8k and the everyday photos, and from the caption-only COCO
    sentences with concepts inferred from their words. Dev: Flickr8k and
    everyday dev, greedy, CIDEr-D, BLEU-4 and object hallucination.

    \b
    Example (the shipped model's recipe; see docs/training.md):
      capcli train-grounded --init runs/shipped.pt --flickr data/flickr8k \\
        --everyday data/coco-everyday --out runs/grounded
      capcli train-grounded --init runs/shipped.pt --flickr data/flickr8k \\
        --everyday data/coco-everyday --out runs/grounded-scst \\
        --objective cider --start runs/grounded/best.pt --lr 5e-5 --batch-size 24 --epochs 3
    """
    try:
        from capcli.train.grounded import GroundedOptions, train_grounded
    except ModuleNotFoundError as exc:
        raise training_extra_missing(exc) from None
    on_interrupt(resume_hint(str(options["out"])))
    train_grounded(GroundedOptions(**options), resume=resume)  # type: ignore[arg-type]
