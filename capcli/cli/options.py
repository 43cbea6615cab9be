"""Options shared by commands: click declarations only, parsed into plain values.

``@runtime_options(...)``: where and how a model runs (device, precision, batch
size, workers) and, with ``search``, how captions are decoded (beam, max-len,
length penalty, the rules, n-best, sampling, prefix: the fields of
:class:`capcli.decode.Decoding`), for caption, url-list, eval and bench;
``@dataset_options``: the annotated data set of train and eval;
``@caption_options(...)``: those plus the output and run options of caption
and url-list (their values become :class:`capcli.captioning.CaptionSettings`).
``--device`` is checked by :func:`capcli.device.parse_device` while parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from capcli.bundle import PRECISIONS, SEARCH_MODES
from capcli.datasets import DATASETS
from capcli.decode import NO_REPEAT_NGRAM
from capcli.device import DEVICE_METAVAR, parse_device
from capcli.errors import UsageError
from capcli.images import DEFAULT_MAX_PIXELS
from capcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS
from capcli.shard import parse_shard
from capcli.writers import FORMATS

EXIT_CODES_HELP = """\b
Exit codes: 0 all captioned; 1 fatal (no model, unwritable output);
2 usage; 3 finished but some inputs failed (see error_kind in the
output); 130 interrupted (Ctrl-C; the output ends on a whole record)."""

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def check_device(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """Click callback: a usage error for a ``--device`` capcli does not know."""
    try:
        parse_device(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def device_option(
    help: str = "Where the model runs; auto uses CUDA when it works, else the CPU; "  # noqa: A002
    "cuda:N picks GPU N.",
) -> Decorator:
    """``--device auto|cpu|cuda[:N]``, checked while parsing."""
    return click.option(
        "--device", default="auto", show_default=True, metavar=DEVICE_METAVAR, callback=check_device, help=help
    )


def _apply(options: list[Decorator], command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        command = option(command)
    return command


def dataset_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--dataset``, ``--data`` and ``--images``: an annotated data set (train and eval)."""
    return _apply(
        [
            click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Annotation format of --data."),
            click.option(
                "--data", type=click.Path(exists=True), required=True, help="Data set folder (or its annotation file)."
            ),
            click.option(
                "--images",
                type=click.Path(exists=True, file_okay=False),
                default=None,
                help="Folder holding the photos [default: found beside the annotations].",
            ),
        ],
        command,
    )


# How captions are decoded, beyond --beam and --max-len (see capcli.decode.Decoding).
DECODING_OPTIONS: list[Decorator] = [
    click.option(
        "--length-penalty",
        type=click.FloatRange(min=0.0),
        metavar="X",
        default=0.7,
        show_default=True,
        help="Beam ranking: log-probability / length ** X (0: raw log-probability, favours short captions).",
    ),
    click.option(
        "--min-len",
        type=click.IntRange(min=1),
        metavar="N",
        default=1,
        show_default=True,
        help="No caption shorter than N words.",
    ),
    click.option(
        "--no-repeat-ngram",
        type=click.IntRange(min=0),
        metavar="N",
        default=NO_REPEAT_NGRAM,
        show_default=True,
        help="A caption never holds the same N words twice; 0 turns the rule off.",
    ),
    click.option(
        "--allow-dangling-end",
        is_flag=True,
        help="Let a caption end on a, the, of, in and the like (by default such an ending is not allowed).",
    ),
    click.option(
        "--no-repeated-words/--repeated-words",
        default=True,
        show_default=True,
        help="A caption says each noun, colour and verb once: only articles, prepositions, pronouns and the like "
        'may repeat (no "A plate of food on a plate."); --repeated-words lets any word come again.',
    ),
    click.option(
        "--num-captions",
        type=click.IntRange(min=1),
        metavar="N",
        default=1,
        show_default=True,
        help="With N > 1, also give each record the beam's N best distinct captions, best first, with their "
        'scores (the record\'s "captions" field; a JSON cell in CSV); N at most --beam.',
    ),
    click.option(
        "--sample",
        is_flag=True,
        help="Draw each word from the model's distribution instead of the beam search (--beam is not used).",
    ),
    click.option(
        "--temperature",
        type=click.FloatRange(min=0.0, min_open=True),
        metavar="T",
        default=None,
        help="With --sample: below 1 safer words, above 1 more varied ones [default: 1].",
    ),
    click.option(
        "--top-p",
        type=click.FloatRange(min=0.0, max=1.0, min_open=True),
        metavar="P",
        default=None,
        help="With --sample: draw only among the likeliest words whose probabilities add up to P [default: 1].",
    ),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        metavar="S",
        default=None,
        help="With --sample: the same seed gives every input the same caption, whatever the batch size, "
        "shard or resume [default: 0].",
    ),
    click.option(
        "--prefix",
        metavar="TEXT",
        default="",
        help='Words every caption starts with, e.g. "a photo of" (each must be in the model\'s vocabulary).',
    ),
    click.option(
        "--unseen-trigram-penalty",
        type=click.FloatRange(min=0.0),
        metavar="W",
        default=0.0,
        show_default=True,
        help="Take W off the log-probability of each word that would make three words in a row (start and end "
        "included) that no sentence of the model's training text has, mostly a template gone wrong (\"A living "
        "room is sitting on a bed.\"); 3 leaves almost none. Needs the bundle's trigram table (the shipped model "
        "has one); runs the numpy search. 0: off.",
    ),
]


def runtime_options(
    *,
    search: bool = True,
    workers: int | None = DEFAULT_WORKERS,
    workers_help: str = "Threads reading and decoding images ahead of the model.",
    device_help: str | None = None,
) -> Decorator:
    """``--batch-size``, ``--beam``, ``--max-len`` and :data:`DECODING_OPTIONS` (``search``), ``--device``,
    ``--precision``, ``--workers``.

    ``workers``: the default thread count (None: the library's, shown as such).
    """
    options: list[Decorator] = [
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            metavar="N",
            default=DEFAULT_BATCH_SIZE,
            show_default=True,
            help="Images captioned together.",
        ),
    ]
    if search:
        options += [
            click.option(
                "--beam",
                type=click.IntRange(min=1),
                metavar="N",
                default=3,
                show_default=True,
                help="Beam width; 1 is greedy decoding.",
            ),
            click.option(
                "--max-len",
                type=click.IntRange(min=1),
                metavar="N",
                default=None,
                help="Longest caption in words [default: the bundle's].",
            ),
            *DECODING_OPTIONS,
            click.option(
                "--search",
                type=click.Choice(SEARCH_MODES),
                default="auto",
                show_default=True,
                help="How the decode loop runs: numpy (step by step from Python), graph (the bundle's search "
                "graph: one onnxruntime call per batch, the same captions) or auto (the graph where it was "
                "measured faster; numpy for options it lacks and with --attention-dir).",
            ),
        ]
    options += [
        device_option(device_help) if device_help else device_option(),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="auto",
            show_default=True,
            help="Arithmetic: auto uses the bundle's int8 decoder on the CPU when it has one "
            "(a step about 1.6x faster), float everywhere else; float16 runs the encoder in float16 "
            "(for GPUs; on the CPU it is slower) with the float decoder.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            metavar="N",
            default=workers,
            show_default="CPU count, at most 8" if workers == DEFAULT_WORKERS else workers is not None,
            help=workers_help + ("" if workers is not None else " [default: capcli's]"),
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _apply(options, command)

    return decorate


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_OUTPUT_OPTIONS: list[Decorator] = [
    click.option(
        "-o", "--output", default="-", show_default=True, metavar="FILE", help="Where records go; - is stdout."
    ),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format [default: csv for a .csv output, else jsonl].",
    ),
    click.option(
        "--model",
        metavar="PATH|NAME",
        default=None,
        help="Model bundle directory or model name (`capcli models`) [default: $CAPCLI_MODEL, then the packaged model].",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        metavar="N",
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse images with more pixels (checked from the header: too_large).",
    ),
    click.option(
        "--resume", is_flag=True, help="Keep an existing output file, skip inputs it already holds, append the rest."
    ),
    click.option(
        "--retry-errors", is_flag=True, help="With --resume (implied): also run again the inputs that failed."
    ),
    click.option(
        "--overwrite", is_flag=True, help="Replace an existing output file (without it, a non-empty one is refused)."
    ),
    click.option(
        "--attention-dir",
        metavar="DIR",
        default=None,
        help="Also draw each caption's attention, word by word, as DIR/<index>-<name>.png "
        '(the record\'s "attention" field).',
    ),
    click.option(
        "--tags",
        type=click.IntRange(min=0),
        metavar="K",
        default=0,
        help="Also list the model's top K ImageNet labels with their probabilities "
        '(the record\'s "tags" field), from the same encoder pass.',
    ),
    click.option(
        "--shard",
        metavar="K/N",
        default=None,
        callback=_parse_shard,
        help="Caption only shard K of N (K from 0), chosen by a stable hash of each input, "
        "so N jobs split the inputs without coordination; indexes stay global.",
    ),
    click.option(
        "--progress",
        is_flag=True,
        help="When stderr is not a terminal (nohup, Slurm): a status line every 10 s with the count, "
        "percentage, rate, ETA and errors (a terminal gets a progress bar without asking).",
    ),
]


def caption_options(
    *, workers: int = DEFAULT_WORKERS, workers_help: str = "Threads reading and decoding images ahead of the model."
) -> Decorator:
    """The options of ``capcli caption`` and ``capcli url-list``, received as keyword arguments
    that make a :class:`capcli.captioning.CaptionSettings`."""
    runtime = runtime_options(workers=workers, workers_help=workers_help)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _apply(_OUTPUT_OPTIONS[:3], runtime(_apply(_OUTPUT_OPTIONS[3:], command)))

    return decorate
