"""Options and the run loop shared by ``capcli caption`` and ``capcli url-list``.

A command adds ``@caption_options``, turns its inputs into an iterable of
:class:`~capcli.sources.Item`, and returns ``run_captioning(items, settings)``
as its exit status. This module is the one place that maps failures to exit
codes: fatal errors print one line (never a traceback), a closed stdout
(``| head``) ends quietly, and Ctrl-C stops after the current batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from capcli.attention import AttentionFigures
from capcli.bundle import PRECISIONS
from capcli.errors import ExitStatus, FatalError
from capcli.images import DEFAULT_MAX_PIXELS
from capcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Captioner, Fetch, Summary, caption_items, make_reader
from capcli.progress import ProgressLine
from capcli.shard import parse_shard, take_shard
from capcli.sources import Item
from capcli.writers import FORMATS, RecordWriter, infer_format, open_output

if TYPE_CHECKING:
    from capcli.bundle import Preprocess

EXIT_CODES_HELP = """\b
Exit codes: 0 all captioned; 1 fatal (no model, unwritable output);
2 usage; 3 finished but some inputs failed (see error_kind in the
output); 130 interrupted (Ctrl-C; the output ends on a whole record)."""


@dataclass(frozen=True)
class CaptionSettings:
    output: str = "-"
    fmt: str | None = None  # None: from the output's suffix
    model: str | None = None  # None: $CAPCLI_MODEL, then the packaged default
    batch_size: int = DEFAULT_BATCH_SIZE
    beam: int = 3
    max_len: int | None = None  # None: the bundle's
    device: str = "auto"
    precision: str = "auto"  # decoder: int8 on the CPU when the bundle has one, else float
    workers: int = DEFAULT_WORKERS
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    retry_errors: bool = False
    overwrite: bool = False  # replace an output file that already holds something
    attention_dir: str | None = None  # write an attention figure per captioned input here
    shard: tuple[int, int] | None = None  # (K, N): only the inputs of shard K of N
    tags: int = 0  # add the tagger's top-K classes to each record


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from capcli.runtime import parse_device  # onnxruntime: loaded only by commands that caption

    try:
        parse_device(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_OPTIONS = [
    click.option("-o", "--output", default="-", show_default=True, metavar="FILE",
                 help="Where records go; - is stdout."),
    click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                 help="Output format [default: csv for a .csv output, else jsonl]."),
    click.option("--model", metavar="PATH", default=None,
                 help="Model bundle directory [default: $CAPCLI_MODEL, then the packaged model]."),
    click.option("--batch-size", type=click.IntRange(min=1), metavar="N", default=DEFAULT_BATCH_SIZE, show_default=True,
                 help="Images captioned together."),
    click.option("--beam", type=click.IntRange(min=1), metavar="N", default=3, show_default=True,
                 help="Beam width; 1 is greedy decoding."),
    click.option("--max-len", type=click.IntRange(min=1), metavar="N", default=None,
                 help="Longest caption in words [default: the bundle's]."),
    click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]", callback=_check_device,
                 help="Where the model runs; auto uses CUDA when it works, else the CPU; cuda:N picks GPU N."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="Decoder arithmetic: auto uses the bundle's int8 decoder on the CPU when it has one "
                      "(a step about 1.6x faster), float everywhere else."),
    click.option("--workers", type=click.IntRange(min=1), metavar="N", default=DEFAULT_WORKERS,
                 show_default="CPU count, at most 8",
                 help="Threads reading and decoding images ahead of the model."),
    click.option("--max-pixels", type=click.IntRange(min=1), metavar="N", default=DEFAULT_MAX_PIXELS, show_default=True,
                 help="Refuse images with more pixels (checked from the header: too_large)."),
    click.option("--resume", is_flag=True,
                 help="Keep an existing output file, skip inputs it already holds, append the rest."),
    click.option("--retry-errors", is_flag=True,
                 help="With --resume (implied): also run again the inputs that failed."),
    click.option("--overwrite", is_flag=True,
                 help="Replace an existing output file (without it, a non-empty one is refused)."),
    click.option("--attention-dir", metavar="DIR", default=None,
                 help="Also draw each caption's attention, word by word, as DIR/<index>-<name>.png "
                      "(the record's \"attention\" field)."),
    click.option("--tags", type=click.IntRange(min=0), metavar="K", default=0,
                 help="Also list the model's top K ImageNet labels with their probabilities "
                      "(the record's \"tags\" field), from the same encoder pass."),
    click.option("--shard", metavar="K/N", default=None, callback=_parse_shard,
                 help="Caption only shard K of N (K from 0), chosen by a stable hash of each input, "
                      "so N jobs split the inputs without coordination; indexes stay global."),
]


def caption_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the captioning options; the command receives them as keyword arguments."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def load_captioner(settings: CaptionSettings) -> tuple[Captioner, Preprocess]:
    """The bundle's captioner and preprocessing; tests replace this function."""
    from capcli.bundle import load_bundle

    bundle = load_bundle(settings.model)
    from capcli.runtime import Captioner as OrtCaptioner  # onnxruntime: imported only when needed

    try:
        captioner = OrtCaptioner(bundle, device=settings.device, beam=settings.beam, max_len=settings.max_len,
                                 precision=settings.precision, tags=settings.tags)  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--device'") from None
    return captioner, bundle.preprocess


def run_captioning(
    items: Iterable[Item],
    settings: CaptionSettings,
    *,
    fetch: Fetch | None = None,
    extra_columns: tuple[str, ...] = (),
) -> ExitStatus:
    """Caption ``items`` into ``settings.output``; the summary goes to stderr."""
    resume = settings.resume or settings.retry_errors
    if resume and settings.output == "-":
        raise click.UsageError("--resume and --retry-errors need -o FILE")
    if not resume and not settings.overwrite and _holds_something(settings.output):
        click.echo(f"Error: {settings.output} already exists and is not empty: add --resume to continue it, "
                   "--retry-errors to run its failures again, or --overwrite to replace it", err=True)  # fmt: skip
        return ExitStatus.USAGE
    fmt = infer_format(settings.output, settings.fmt)
    console = Console(stderr=True)
    summary = Summary()
    stop = threading.Event()
    started = time.monotonic()
    writer: RecordWriter | None = None
    reported = False  # an Error: line was printed
    device = ""
    if settings.attention_dir:
        extra_columns += ("attention",)
    if settings.tags:
        extra_columns += ("tags",)
    if settings.shard:
        items = take_shard(items, *settings.shard)
    try:
        captioner, pre = load_captioner(settings)
        device = str(getattr(captioner, "device", ""))
        started = time.monotonic()  # the rate counts captioning, not loading the model
        figures = AttentionFigures(settings.attention_dir) if settings.attention_dir else None
        writer, done = open_output(settings.output, fmt, resume=resume, retry_errors=settings.retry_errors,
                                   extra_columns=extra_columns)
        read = make_reader(pre, max_pixels=settings.max_pixels, fetch=fetch,
                           thumbnail=figures.thumbnail if figures else None)
        todo = _skip(items, done, summary, settings.output)
        records = caption_items(todo, captioner, read, batch_size=settings.batch_size, workers=settings.workers,
                                stop=stop, annotate=figures.annotate if figures else None)
        # A live line only on a terminal, and not when records scroll past on that terminal too.
        live = console.is_terminal and not (settings.output == "-" and _isatty(sys.stdout))
        with contextlib.closing(records), _first_sigint_sets(stop), ProgressLine(console, live=live) as progress:
            for record in records:
                _write(writer, record, settings.output)
                summary.add(record)
                progress.update(summary)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        _silence_stdout()
        return ExitStatus.OK
    except FatalError as exc:
        reported = True
        click.echo(f"Error: {exc}", err=True)
        return ExitStatus.FATAL
    except KeyboardInterrupt:  # a second Ctrl-C, or one before captioning started
        stop.set()
    finally:
        if writer is not None:
            _close(writer, quiet=reported)
    summary.elapsed = time.monotonic() - started
    text = summary.describe() + (f" on {device}" if device else "")
    if settings.shard:
        text += " (shard {}/{})".format(*settings.shard)
    console.print(("interrupted: " if stop.is_set() else "") + text, markup=False, highlight=False, soft_wrap=True)
    if stop.is_set():
        return ExitStatus.INTERRUPTED
    return ExitStatus.ITEMS_FAILED if summary.failed else ExitStatus.OK


def _holds_something(output: str) -> bool:
    """A regular file with at least one byte (``-o /dev/null`` and new files are fine)."""
    try:
        st = os.stat(output)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def _skip(items: Iterable[Item], done: dict[int, str], summary: Summary, output: str) -> Iterator[Item]:
    """The inputs without a record in the output, matched by position (an input given twice is two inputs)."""
    for item in items:
        source = done.get(item.index)
        if source is None:
            yield item
        elif source == item.source:
            summary.skipped += 1
        else:
            raise FatalError(f"{output} holds record {item.index} for {source!r}, but input {item.index} is "
                             f"{item.source!r}: resume with the same inputs, in the same order")  # fmt: skip


def _write(writer: RecordWriter, record: dict[str, Any], output: str) -> None:
    try:
        writer.write(record)
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full disk, a vanished network share: the record was cut back out
        where = "" if output == "-" else f"; {output} ends on its last whole record"
        raise FatalError(f"cannot write {output}: {exc.strerror or exc}{where}") from None


def _close(writer: RecordWriter, *, quiet: bool = False) -> None:
    """Close the output; ``quiet`` after an error was already reported (one ``Error:`` line per run)."""
    try:
        writer.close()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as exc:
        if not quiet:
            click.echo(f"Error: closing the output failed: {exc.strerror or exc}", err=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. under a test runner)
        pass


@contextlib.contextmanager
def _first_sigint_sets(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C asks the pipeline to stop after the current batch; a second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
