"""Progress: the status line's text and cadence on a fake clock, the bar, and the total learned by walking ahead."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from capcli.pipeline import Summary
from capcli.progress import ProgressLine, duration, status
from capcli.sources import Item, WalkedAhead, iter_items


def test_status_text() -> None:
    assert status(1234, 10_000, 41.2, 2) == "1,234/10,000 images (12.3%), 41.2 images/s, ETA 3m33s, 2 errors"
    assert status(3, None, 0.25, 1) == "3 images, 0.2 images/s, 1 error"  # no total: no percentage, no ETA
    assert status(0, 5, 0.0, 0) == "0/5 images (0.0%), 0.0 images/s, 0 errors"  # no rate yet: no ETA
    assert [duration(s) for s in (0, 44.6, 60, 214, 3599, 7500)] == ["0s", "45s", "1m00s", "3m34s", "59m59s", "2h05m"]


def _log(*, total: int | None, step: float, records: int, interval: float = 10.0, **kw: object) -> list[str]:
    """The status lines of ``records`` records, one every ``step`` seconds of a fake clock, stderr not a terminal."""
    clock = itertools.count(0.0, step).__next__
    out = io.StringIO()
    summary = Summary(**kw)  # type: ignore[arg-type]
    with ProgressLine(Console(file=out), live=False, lines=True, total=lambda: total, clock=clock) as progress:
        for n in range(records):
            if n % 4 == 3:
                summary.failed["decode_error"] += 1
            else:
                summary.ok += 1
            progress.update(summary)
    return out.getvalue().splitlines()


def test_a_status_line_every_interval_of_the_clock() -> None:
    # A record every 4 s: lines at 12 s (3 records), 24 s (6) and 36 s (9), none in between.
    assert _log(total=10_000, step=4, records=10) == [
        "capcli: 3/10,000 images (0.0%), 0.2 images/s, ETA 11h06m, 0 errors",
        "capcli: 6/10,000 images (0.1%), 0.2 images/s, ETA 11h06m, 1 error",
        "capcli: 9/10,000 images (0.1%), 0.2 images/s, ETA 11h06m, 2 errors",
    ]
    # Records slower than the interval: one line per record, never a burst to catch up.
    assert len(_log(total=None, step=25, records=4)) == 4
    assert _log(total=None, step=1, records=9) == []  # not 10 s yet


def test_unknown_total_and_resumed_inputs() -> None:
    assert _log(total=None, step=5, records=2) == ["capcli: 2 images, 0.2 images/s, 0 errors"]
    # 6 inputs were in the output already: done, but not in the rate (0.2 images/s, not 0.8).
    assert _log(total=10, step=5, records=2, skipped=6) == [
        "capcli: 8/10 images (80.0%), 0.2 images/s, ETA 10s, 0 errors"
    ]


def test_no_lines_unless_asked_and_a_bar_on_a_terminal() -> None:
    out = io.StringIO()
    with ProgressLine(Console(file=out), live=False, total=lambda: 5, clock=itertools.count(0, 60).__next__) as p:
        p.update(Summary(ok=3))
    assert out.getvalue() == ""
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with ProgressLine(terminal, live=True, total=lambda: 5, clock=itertools.count(0, 10).__next__) as p:
        p.update(Summary(ok=3))
    drawn = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "━" in drawn and "3/5 images (60.0%), 0.3 images/s, ETA 7s, 0 errors" in drawn


# --- the total, learned by walking the inputs ahead of the captioning ---------------------------------------


def test_total_of_an_argument_list_stdin_and_a_directory(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.png", "sub/c.jpg", "sub/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    stdin = io.BytesIO(b"x.jpg\n\ny.jpg\n")
    walked = WalkedAhead(iter_items([str(tmp_path), "-", "missing.jpg"], stdin=stdin))
    items = list(walked)
    assert walked.total == len(items) == 6  # 3 walked, 2 read from stdin, 1 given
    assert [item.index for item in items] == list(range(6))
    assert [Path(item.source).name for item in items] == ["a.jpg", "b.png", "c.jpg", "x.jpg", "y.jpg", "missing.jpg"]


def test_the_total_is_unknown_while_the_walk_is_more_than_the_limit_ahead() -> None:
    walked = WalkedAhead((Item(i, f"{i}.jpg") for i in range(10)), limit=3)
    assert walked.total is None  # the walk waits with 3 items ahead of a consumer that has taken none
    assert [item.index for item in walked] == list(range(10))
    assert walked.total == 10


def test_an_error_of_the_walk_comes_after_the_items_before_it() -> None:
    def items() -> Iterator[Item]:
        yield Item(0, "a.jpg")
        raise OSError("stdin went away")

    walked = WalkedAhead(items())
    assert next(walked).source == "a.jpg"
    with pytest.raises(OSError, match="stdin went away"):
        next(walked)
    assert walked.total is None


def test_close_stops_the_walk() -> None:
    walked = WalkedAhead((Item(i, f"{i}.jpg") for i in itertools.count()), limit=2)
    next(walked)
    walked.close()
    assert list(walked) == [] and walked.total is None
