"""The caption run behind ``capcli caption`` and ``capcli url-list``: inputs -> model -> output file.

:func:`run_captioning` refuses to overwrite an output that holds records
(unless asked), skips what an output being resumed already holds, captions the
rest through :class:`capcli.Model`, writes one record per input, draws the
progress line and the summary on stderr, and returns the run's
:class:`~capcli.errors.ExitStatus`. Ctrl-C stops after the current batch; a
closed stdout (``| head``) ends quietly. Failures raise capcli's own errors
(:class:`~capcli.errors.UsageError`, :class:`~capcli.errors.FatalError`):
the CLI maps them to exit codes in one place (``capcli.cli``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from capcli.api import Model, load
from capcli.attention import AttentionFigures
from capcli.decode import NO_REPEAT_NGRAM
from capcli.errors import ExitStatus, FatalError, UsageError
from capcli.images import DEFAULT_MAX_PIXELS
from capcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, Annotate, Fetch, Summary
from capcli.progress import ProgressLine
from capcli.saved import SavedImages
from capcli.shard import take_shard
from capcli.sidecars import Sidecars
from capcli.sources import Item, WalkedAhead
from capcli.writers import RESUMABLE_FORMATS, RecordWriter, infer_format, open_output


@dataclass(frozen=True)
class CaptionSettings:
    output: str = "-"
    fmt: str | None = None  # None: from the output's suffix
    model: str | None = None  # None: $CAPCLI_MODEL, then the packaged default
    batch_size: int = DEFAULT_BATCH_SIZE
    beam: int = 3
    max_len: int | None = None  # None: the bundle's
    length_penalty: float = 0.7
    min_len: int = 1
    no_repeat_ngram: int = NO_REPEAT_NGRAM
    allow_dangling_end: bool = False
    no_repeated_words: bool = True
    num_captions: int = 1  # > 1: the beam's best captions in each record's "captions"
    sample: bool = False  # with temperature, top_p and seed (None: their defaults)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    prefix: str = ""
    unseen_trigram_penalty: float = 0.0  # > 0: off each word making a trigram the training text lacks
    device: str = "auto"
    precision: str = "auto"  # decoder: int8 on the CPU when the bundle has one, else float
    workers: int = DEFAULT_WORKERS
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    retry_errors: bool = False
    overwrite: bool = False  # replace an output file that already holds something
    attention_dir: str | None = None  # write an attention figure per captioned input here
    search: str = "auto"  # numpy | graph | auto (the search graph gives no attention maps: numpy with attention_dir)
    shard: tuple[int, int] | None = None  # (K, N): only the inputs of shard K of N
    tags: int = 0  # add the tagger's top-K classes to each record
    sidecar: str | None = None  # also write each caption to a file with this suffix beside its image
    skip_existing: bool = False  # with sidecar: leave the images that already have one
    progress: bool = False  # stderr not a terminal: a status line every 10 s (nohup, Slurm)
    save_images: str | None = None  # url-list: keep each downloaded image in this directory


def load_model(settings: CaptionSettings) -> Model:
    """The model the settings name (tests replace this function with a fake's :class:`Model`)."""
    return load(
        settings.model,
        device=settings.device,
        beam=settings.beam,
        max_len=settings.max_len,
        precision=settings.precision,
        tags=settings.tags,
        length_penalty=settings.length_penalty,
        min_len=settings.min_len,
        no_repeat_ngram=settings.no_repeat_ngram,
        allow_dangling_end=settings.allow_dangling_end,
        no_repeated_words=settings.no_repeated_words,
        num_captions=settings.num_captions,
        sample=settings.sample,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        prefix=settings.prefix,
        unseen_trigram_penalty=settings.unseen_trigram_penalty,
        search="numpy" if settings.attention_dir else settings.search,
    )


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
        raise UsageError("--resume and --retry-errors need -o FILE")
    if not resume and not settings.overwrite and _holds_something(settings.output):
        raise UsageError(
            f"{settings.output} already exists and is not empty: add --resume to continue it, "
            "--retry-errors to run its failures again, or --overwrite to replace it"
        )
    fmt = infer_format(settings.output, settings.fmt)
    if resume and fmt not in RESUMABLE_FORMATS:
        raise UsageError(f"--resume and --retry-errors need --format {' or '.join(RESUMABLE_FORMATS)}")
    console = Console(stderr=True)
    summary = Summary()
    stop = threading.Event()
    started = time.monotonic()
    writer: RecordWriter | None = None
    failed = False  # a fatal error is on its way to the one Error: line of the run
    device = ""
    if settings.save_images:
        extra_columns += ("saved",)
    if settings.attention_dir:
        extra_columns += ("attention",)
    if settings.tags:
        extra_columns += ("tags",)
    if settings.num_captions > 1:
        extra_columns += ("captions",)
    if settings.shard:
        items = take_shard(items, *settings.shard)
    items = walked = WalkedAhead(items)  # the progress' total (the shard's), long before captioning ends
    sidecars = Sidecars(settings.sidecar, skip_existing=settings.skip_existing) if settings.sidecar else None
    if sidecars:
        items = sidecars.select(items, summary)  # before the reader pool: a skipped image is never decoded
    try:
        model = load_model(settings)
        model.batch_size, model.workers, model.max_pixels = settings.batch_size, settings.workers, settings.max_pixels
        model.fetch = fetch
        device = model.device
        started = time.monotonic()  # the rate counts captioning, not loading the model
        figures = AttentionFigures(settings.attention_dir) if settings.attention_dir else None
        saved = SavedImages(settings.save_images) if settings.save_images else None
        writer, done = open_output(
            settings.output, fmt, resume=resume, retry_errors=settings.retry_errors, extra_columns=extra_columns
        )
        todo = _skip(items, done, summary, settings.output)
        records = model.caption(
            todo,
            stop=stop,
            annotate=_annotate(saved.annotate if saved else None, figures.annotate if figures else None),
            thumbnail=figures.thumbnail if figures else None,
            keep=saved.keep if saved else None,
        )
        # A bar only on a terminal, and not when records scroll past on that terminal too; in a log, lines.
        live = console.is_terminal and not (settings.output == "-" and _isatty(sys.stdout))
        lines = settings.progress and not console.is_terminal
        progress_line = ProgressLine(console, live=live, lines=lines, total=lambda: walked.total)
        with contextlib.closing(records), _first_sigint_sets(stop), progress_line as progress:
            for record in records:
                if sidecars:
                    sidecars.write(record)
                _write(writer, record, settings.output)
                summary.add(record)
                progress.update(summary)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        _silence_stdout()
        return ExitStatus.OK
    except FatalError:
        failed = True
        raise
    except KeyboardInterrupt:  # a second Ctrl-C, or one before captioning started
        stop.set()
    finally:
        walked.close()
        if writer is not None:
            _close(writer, quiet=failed)
    summary.elapsed = time.monotonic() - started
    text = summary.describe() + (f" on {device}" if device else "")
    if settings.shard:
        text += " (shard {}/{})".format(*settings.shard)
    console.print(("interrupted: " if stop.is_set() else "") + text, markup=False, highlight=False, soft_wrap=True)
    if stop.is_set():
        return ExitStatus.INTERRUPTED
    return ExitStatus.ITEMS_FAILED if summary.failed else ExitStatus.OK


def _annotate(*annotators: Annotate | None) -> Annotate | None:
    """One annotate function giving the fields of all of ``annotators`` (None: no extra field)."""
    chosen = [annotate for annotate in annotators if annotate is not None]
    if not chosen:
        return None
    return lambda item, caption, loaded: {
        k: v for annotate in chosen for k, v in annotate(item, caption, loaded).items()
    }


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
            raise FatalError(
                f"{output} holds record {item.index} for {source!r}, but input {item.index} is "
                f"{item.source!r}: resume with the same inputs, in the same order"
            )


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
            print(f"Error: closing the output failed: {exc.strerror or exc}", file=sys.stderr, flush=True)


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
