"""Progress on stderr: a live line when asked for (a terminal), nothing at all otherwise."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from capcli.pipeline import Summary


class ProgressLine:
    """``with ProgressLine(console) as p: ... p.update(summary)`` after each record."""

    def __init__(self, console: Console, *, live: bool) -> None:
        self._started = time.monotonic()
        self._progress = Progress(
            SpinnerColumn(),
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
        rate = summary.done / max(time.monotonic() - self._started, 1e-9)
        failed = sum(summary.failed.values())
        self._progress.update(self._task, description=f"{summary.ok} captioned, {failed} failed, {rate:.1f} images/s")
