"""Items -> read pool -> batches -> captioner -> records, in input order, with bounded memory.

A thread pool reads and preprocesses images ahead of the captioner (Pillow
and the network release the GIL), holding at most ``window`` items in flight;
the main thread stacks each batch, captions it -- on one of the captioner's
``lanes`` when it has several, so that batches overlap -- and yields one
record per item in input order. Nothing ever lists the whole input.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from capcli import images
from capcli.errors import FatalError, ItemError
from capcli.sources import Item

if TYPE_CHECKING:
    from capcli.bundle import Preprocess

Record = dict[str, Any]
Reader = Callable[[Item], images.Loaded]  # raises ItemError
Fetch = Callable[[str], bytes]  # URL -> encoded image bytes; raises ItemError
Annotate = Callable[[Item, Any, images.Loaded], Record]  # more fields for a captioned item's record
Keep = Callable[[Item, bytes], None]  # given a URL item's downloaded bytes once they decoded
Batch = list[tuple[Item, "images.Loaded | ItemError"]]

DEFAULT_BATCH_SIZE = 16
DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))

# Error kinds the pipeline itself adds to those of images (and of capcli.fetch).
ERROR_KINDS = {
    "unsupported_source": "a URL input where no downloader is available",
    "internal_error": "a bug in capcli while reading this input (please report it)",
}


class BatchCaptioner(Protocol):
    """What the pipeline captions with (:class:`capcli.runtime.Captioner`, or a test's fake).

    Optionally with ``lanes``: how many batches it may caption at once, from different threads; with
    ``takes_indices`` true: ``caption(images, indices=...)`` gets each image's index in the input; and
    with ``takes_pixels`` true, images come as (B, H, W, 3) uint8 pixels (see :mod:`capcli.pixel_input`)."""

    def caption(self, images: np.ndarray) -> list[Any]: ...  # (B, 3, H, W) -> B objects with .text, .score

    # Optionally ``cancel()``: end the batches being captioned at once (they raise); the captioner is spent.


def make_reader(
    pre: Preprocess,
    *,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    fetch: Fetch | None = None,
    thumbnail: int | None = None,
    keep: Keep | None = None,
    pixels: bool = False,
) -> Reader:
    """The standard reader: files through capcli.images, URLs through ``fetch`` first.

    ``thumbnail``: keep a small RGB copy of each image (see :func:`capcli.images.load`).
    ``pixels``: read each image into uint8 pixels, for a captioner that normalises them itself.
    ``keep(item, data)``: called with a download's bytes once they decoded (``url-list --save-images``).
    """

    def read(item: Item) -> images.Loaded:
        if item.error is not None:
            raise item.error
        if item.image is not None:
            return images.load_picture(item.image, pre, max_pixels, thumbnail, pixels)
        if item.url is not None:
            if fetch is None:
                raise ItemError("unsupported_source", "URL inputs are not supported here")
            data = fetch(item.url)
            loaded = images.load(data, pre, max_pixels, thumbnail, pixels)
            if keep is not None:
                keep(item, data)
            return loaded
        assert item.path is not None
        return images.load(item.path, pre, max_pixels, thumbnail, pixels)

    return read


@dataclass
class Summary:
    """Counts for the stderr summary; ``add`` every record as it is written."""

    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # already in the output (--resume)
    kept: int = 0  # already captioned in a sidecar file (--skip-existing)
    elapsed: float = 0.0

    def add(self, record: Record) -> None:
        if record["status"] == "ok":
            self.ok += 1
        else:
            self.failed[record["error_kind"]] += 1

    @property
    def done(self) -> int:
        return self.ok + sum(self.failed.values())

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def describe(self) -> str:
        text = f"{self.ok} captioned, {sum(self.failed.values())} failed"
        if self.failed:
            text += " (" + ", ".join(f"{kind} {n}" for kind, n in sorted(self.failed.items())) + ")"
        if self.skipped:
            text += f", {self.skipped} skipped (already in the output)"
        if self.kept:
            text += f", {self.kept} skipped (sidecar exists)"
        return text + f" in {self.elapsed:.1f} s, {self.images_per_s:.1f} images/s"


def caption_items(
    items: Iterable[Item],
    captioner: BatchCaptioner,
    read: Reader,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    stop: threading.Event | None = None,
    annotate: Annotate | None = None,
) -> Iterator[Record]:
    """One record per item, in input order.

    ``annotate(item, caption, loaded)`` adds fields to each captioned item's
    record (e.g. the path of its attention figure).

    When ``stop`` is set, no new batch is started: records of finished
    batches have been yielded, the rest are left for ``--resume``.

    When the consumer stops early (a second Ctrl-C, an error, ``close()``),
    batches being captioned are abandoned: the captioner's ``cancel()`` (when
    it has one) ends its running batches, and no thread is waited for.
    """
    stop = stop or threading.Event()
    window = max(2 * batch_size, batch_size + 2 * workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="capcli-read")
    lanes = max(1, int(getattr(captioner, "lanes", 1)))
    lane_pool = ThreadPoolExecutor(lanes, thread_name_prefix="capcli-caption") if lanes > 1 else None
    running: deque[tuple[Batch, Future[list[Any]]]] = deque()  # batches being captioned, oldest first

    def start(batch: Batch) -> Iterator[Record]:
        """Caption ``batch`` (on a lane when there are several); yield the oldest batches' records
        until a lane is free."""
        if lane_pool is None:
            yield from _records(batch, _caption_batch(captioner, batch), annotate)
            return
        running.append((batch, lane_pool.submit(_caption_batch, captioner, batch)))
        while len(running) >= lanes:
            yield from _records(*_result(running.popleft()), annotate)

    finished = False
    try:
        batch: Batch = []
        loaded = 0
        for item, result in _read_ahead(items, read, pool, window, stop):
            if stop.is_set():
                break
            batch.append((item, result))
            loaded += isinstance(result, images.Loaded)
            if loaded == batch_size:
                yield from start(batch)
                batch, loaded = [], 0
        if batch and not stop.is_set():
            yield from start(batch)
        while running:  # batches already started finish, even after ``stop``
            yield from _records(*_result(running.popleft()), annotate)
        finished = True
    finally:
        if not finished and lane_pool is not None:  # a batch may still be running on a lane
            cancel = getattr(captioner, "cancel", None)
            if cancel is not None:
                cancel()
        pool.shutdown(wait=finished, cancel_futures=True)
        if lane_pool is not None:
            lane_pool.shutdown(wait=finished, cancel_futures=True)


def _read_ahead(
    items: Iterable[Item], read: Reader, pool: ThreadPoolExecutor, window: int, stop: threading.Event
) -> Iterator[tuple[Item, images.Loaded | ItemError]]:
    pending: deque[tuple[Item, Future[images.Loaded | ItemError]]] = deque()
    source = iter(items)
    while True:
        while len(pending) < window and not stop.is_set():
            item = next(source, None)
            if item is None:
                break
            pending.append((item, pool.submit(_read_one, read, item)))
        if not pending:
            return
        item, future = pending.popleft()
        yield item, future.result()


def _read_one(read: Reader, item: Item) -> images.Loaded | ItemError:
    try:
        return read(item)
    except ItemError as exc:
        return exc
    except FatalError:
        raise  # e.g. a bundle whose preprocessing capcli cannot do: stop the run
    except Exception as exc:  # keep the run going; the record says what happened
        return ItemError("internal_error", f"{type(exc).__name__}: {exc}")


def _caption_batch(captioner: BatchCaptioner, batch: Batch) -> list[Any]:
    loaded = [(item.index, r.array) for item, r in batch if isinstance(r, images.Loaded)]
    if not loaded:
        return []
    arrays = [array for _, array in loaded]
    # Seeded sampling draws an image's words by its index in the input, whatever batch it is in.
    indices = {"indices": [index for index, _ in loaded]} if getattr(captioner, "takes_indices", False) else {}
    captions = captioner.caption(np.stack(arrays), **indices)  # (B, 3, H, W) float32 or (B, H, W, 3) uint8 in
    if len(captions) != len(arrays):
        raise FatalError(f"the captioner returned {len(captions)} captions for {len(arrays)} images")
    return captions


def _result(started: tuple[Batch, Future[list[Any]]]) -> tuple[Batch, list[Any]]:
    batch, future = started
    return batch, future.result()


def _records(batch: Batch, captions: list[Any], annotate: Annotate | None = None) -> Iterator[Record]:
    results = iter(captions)
    for item, result in batch:
        if isinstance(result, ItemError):
            yield error_record(item, result)
        else:
            caption = next(results)
            record = ok_record(item, caption, result.n_frames)
            yield (record | annotate(item, caption, result)) if annotate else record


def ok_record(item: Item, caption: Any, n_frames: int = 1) -> Record:
    record = _head(item) | {"status": "ok", "caption": caption.text, "score": round(float(caption.score), 4)}
    if n_frames > 1:
        record["n_frames"] = n_frames
    if getattr(caption, "tags", None) is not None:
        record["tags"] = [{"label": label, "p": round(p, 4)} for label, p in caption.tags]
    if getattr(caption, "n_best", None) is not None:
        record["captions"] = [{"caption": text, "score": round(float(score), 4)} for text, score in caption.n_best]
    return record


def error_record(item: Item, error: ItemError) -> Record:
    return _head(item) | {
        "status": "error",
        "caption": None,
        "score": None,
        "error_kind": error.kind,
        "error": str(error),
    }


def _head(item: Item) -> Record:
    return {"index": item.index, "source": item.source, **(item.extra or {})}
