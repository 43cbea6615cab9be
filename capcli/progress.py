"""Progress on stderr while captioning: a bar on a terminal, a status line now and then in a log, or nothing.

On a terminal (``live``) a bar with the count, percentage, rate and ETA. Where
stderr is a file or a pipe (``nohup``, Slurm) and ``--progress`` asks for it
(``lines``), one line every :data:`STATUS_INTERVAL` seconds::

    capcli: 1,234/10,000 images (12.3%), 41.2 images/s, ETA 3m33s, 2 errors

While the number of inputs is not known yet (the inputs are still being
walked), the count and the rate only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from capcli.pipeline import Summary

STATUS_INTERVAL = 10.0  # seconds between status lines in a log: readable, and cheap for a week-long job


def duration(seconds: float) -> str:
    """``45s``, ``3m34s``, ``2h05m``: an ETA to the second is noise beyond an hour."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def status(done: int, total: int | None, rate: float, errors: int) -> str:
    """``1,234/10,000 images (12.3%), 41.2 images/s, ETA 3m34s, 2 errors``; no total: no percentage, no ETA."""
    if total is None:
        text = f"{done:,} images"
    else:
        text = f"{done:,}/{total:,} images ({100 * done / max(total, 1):.1f}%)"
    text += f", {rate:.1f} images/s"
    if total is not None and rate > 0:
        text += f", ETA {duration(max(total - done, 0) / rate)}"
    return text + f", {errors:,} error" + ("" if errors == 1 else "s")


class ProgressLine:
    """``with ProgressLine(console, ...) as p: ... p.update(summary)`` after each record.

    ``total()`` is the number of inputs, or None while it is not known. Inputs
    already done (in the output being resumed, or with a sidecar) count as done
    but not in the rate, which is of images captioned since the start. ``clock``
    and ``interval`` set the status lines' cadence (tests pass a fake clock).
    """

    def __init__(
        self,
        console: Console,
        *,
        live: bool,
        lines: bool = False,
        total: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = STATUS_INTERVAL,
    ) -> None:
        self._console = console
        self._lines = lines
        self._total = total
        self._clock = clock
        self._interval = interval
        self._started = self._said = clock()
        self._progress = Progress(
            BarColumn(),  # pulses while the total is unknown
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # the summary line replaces it
            redirect_stdout=False,  # records go to stdout's bytes directly, never through rich
            disable=not live,
        )
        self._task = self._progress.add_task("starting", total=None)

    def __enter__(self) -> ProgressLine:
        self._progress.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._progress.stop()

    def update(self, summary: Summary) -> None:
        now = self._clock()
        total = self._total()
        done = summary.done + summary.skipped + summary.kept
        rate = summary.done / max(now - self._started, 1e-9)
        text = status(done, total, rate, sum(summary.failed.values()))
        self._progress.update(self._task, description=text, completed=done, total=total)
        if self._lines and now - self._said >= self._interval:
            self._said = now
            self._console.print(f"capcli: {text}", markup=False, highlight=False, soft_wrap=True)
