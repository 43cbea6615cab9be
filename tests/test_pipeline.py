"""The pipeline: input order under random read latency, bounded read-ahead, errors, stop."""

from __future__ import annotations

import io
import itertools
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeCaption, FakeCaptioner
from PIL import Image

from capcli.bundle import Preprocess
from capcli.errors import FatalError, ItemError
from capcli.images import Loaded
from capcli.pipeline import Summary, caption_items, make_reader
from capcli.sources import Item, iter_items


class ConstantCaptioner(FakeCaptioner):
    """Names each image by the constant it is filled with, so mix-ups show."""

    def __init__(self) -> None:
        super().__init__(name=lambda x: f"Image {int(x[0, 0, 0])}.", score=-0.123456)


def jittery_reader(fail_every: int = 0, delay: float = 0.004):
    rng = random.Random(0)
    lock = threading.Lock()

    def read(item: Item) -> Loaded:
        with lock:
            pause = rng.random() * delay
        time.sleep(pause)  # reads finish out of order
        if fail_every and item.index % fail_every == 0:
            raise ItemError("truncated", f"item {item.index}")
        return Loaded(np.full((3, 2, 2), item.index, np.float32), 1)

    return read


def items(n: int):
    return (Item(i, f"img{i}.jpg", path=f"img{i}.jpg") for i in range(n))


def test_records_come_in_input_order_with_errors_in_place() -> None:
    captioner = ConstantCaptioner()
    records = list(caption_items(items(50), captioner, jittery_reader(fail_every=7), batch_size=4, workers=4))
    assert [r["index"] for r in records] == list(range(50))
    for r in records:
        if r["index"] % 7 == 0:
            assert r == {
                "index": r["index"],
                "source": f"img{r['index']}.jpg",
                "status": "error",
                "caption": None,
                "score": None,
                "error_kind": "truncated",
                "error": f"item {r['index']}",
            }
        else:
            assert (r["status"], r["caption"], r["score"]) == ("ok", f"Image {r['index']}.", -0.1235)
    assert max(captioner.batches) == 4 and sum(captioner.batches) == 50 - 8


def test_read_ahead_is_bounded_on_an_endless_input() -> None:
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield Item(i, str(i), path=str(i))

    records = caption_items(endless(), ConstantCaptioner(), jittery_reader(delay=0), batch_size=4, workers=2)
    first = list(itertools.islice(records, 10))
    records.close()
    assert [r["index"] for r in first] == list(range(10))
    assert pulled <= 12 + 8  # what was captioned, plus one read-ahead window


def test_stop_finishes_the_current_batch_and_takes_no_more_work() -> None:
    stop = threading.Event()
    out = []
    for record in caption_items(
        items(100), ConstantCaptioner(), jittery_reader(delay=0), batch_size=5, workers=2, stop=stop
    ):
        out.append(record)
        stop.set()
    assert [r["index"] for r in out] == [0, 1, 2, 3, 4]


def test_unexpected_reader_failures_become_records_fatal_ones_stop_the_run() -> None:
    def buggy(item: Item) -> Loaded:
        if item.index == 1:
            raise ZeroDivisionError("oops")
        return Loaded(np.zeros((3, 2, 2), np.float32), 3)

    records = list(caption_items(items(3), ConstantCaptioner(), buggy, batch_size=2, workers=1))
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert records[1]["error_kind"] == "internal_error" and "oops" in records[1]["error"]
    assert records[0]["n_frames"] == 3

    def fatal(item: Item) -> Loaded:
        raise FatalError("bundle preprocessing unknown")

    with pytest.raises(FatalError):
        list(caption_items(items(3), ConstantCaptioner(), fatal))


def png_bytes(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, "PNG")
    return buf.getvalue()


PRE = Preprocess(size=(4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_standard_reader_dispatches_files_urls_and_expansion_errors(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    specs = [
        str(tmp_path / "a.png"),
        "https://example.org/b.png",
        str(tmp_path / "*.gif"),
        str(tmp_path / "missing.png"),
    ]
    fetched = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return png_bytes((0, 0, 255))

    with_fetch = list(caption_items(iter_items(specs), ConstantCaptioner(), make_reader(PRE, fetch=fetch)))
    assert [r["status"] for r in with_fetch] == ["ok", "ok", "error", "error"]
    assert [r.get("error_kind") for r in with_fetch[2:]] == ["not_found", "not_found"]
    assert fetched == ["https://example.org/b.png"]

    read = make_reader(PRE)
    with pytest.raises(ItemError) as info:
        read(Item(0, "https://x/y.png", url="https://x/y.png"))
    assert info.value.kind == "unsupported_source"
    loaded = read(Item(0, "a", path=str(tmp_path / "a.png")))
    assert loaded.array.shape == (3, 4, 4) and np.allclose(loaded.array[0], 1.0)


def test_summary_counts_and_describes() -> None:
    summary = Summary(skipped=2, elapsed=2.0)
    for record in (
        {"status": "ok"},
        {"status": "error", "error_kind": "truncated"},
        {"status": "error", "error_kind": "not_found"},
        {"status": "ok"},
    ):
        summary.add(record)
    assert (summary.ok, summary.done, summary.images_per_s) == (2, 4, 2.0)
    assert summary.describe() == (
        "2 captioned, 2 failed (not_found 1, truncated 1), 2 skipped (already in the output) in 2.0 s, 2.0 images/s"
    )


class LaneCaptioner(ConstantCaptioner):
    """Two lanes; batches take random time, so they finish out of order; counts overlap."""

    lanes = 2

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.rng = random.Random(1)

    def caption(self, images: np.ndarray) -> list[FakeCaption]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            pause = self.rng.random() * 0.02
        time.sleep(pause)
        try:
            return super().caption(images)
        finally:
            with self.lock:
                self.running -= 1


def test_lanes_caption_batches_at_once_and_keep_input_order() -> None:
    captioner = LaneCaptioner()
    records = list(caption_items(items(60), captioner, jittery_reader(fail_every=9, delay=0), batch_size=4, workers=2))
    assert [r["index"] for r in records] == list(range(60))
    assert all(r["caption"] == f"Image {r['index']}." for r in records if r["status"] == "ok")
    assert captioner.most_at_once == 2  # never more batches in flight than lanes


def test_stop_with_lanes_finishes_started_batches_only() -> None:
    captioner = LaneCaptioner()
    stop = threading.Event()
    out = []
    for record in caption_items(items(200), captioner, jittery_reader(delay=0), batch_size=5, workers=2, stop=stop):
        out.append(record)
        if len(out) == 12:
            stop.set()
    # Whole batches only, in order, and nothing started after the stop beyond what was in flight.
    assert [r["index"] for r in out] == list(range(len(out)))
    assert len(out) % 5 == 0 and len(out) <= 12 + 2 * 5
