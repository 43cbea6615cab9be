"""The worker side of ``capcli bench``: one scenario in a fresh process (``python -m capcli.bench.worker SPEC_JSON``).

It prints one JSON result line: the limit (the encoder alone) or capcli end to end through
:func:`capcli.load`; the tutorial way is in :mod:`capcli.bench.tutorial`.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import IO, Any

from capcli.bench.scenarios import Result, Scenario, read_paths
from capcli.bench.tutorial import run_tutorial


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    scenario = Scenario(**spec["scenario"])
    run = {"limit": _limit, "read": _read, "capcli": _capcli, "tutorial": run_tutorial}[scenario.kind]
    result = run(scenario, spec)
    result.peak_rss_mib = round(peak_rss_mib(), 1)
    result.images_per_s = round(result.images / result.seconds, 3) if result.seconds > 0 else 0.0
    result.stages = {k: round(v, 4) for k, v in result.stages.items()}
    return asdict(result)


def _model(spec: dict[str, Any], beam: int, search: str = "auto") -> Any:
    """The model as ``capcli.load`` gives it to ``capcli caption``."""
    from capcli.api import load
    from capcli.pipeline import DEFAULT_WORKERS

    return load(
        spec["model"],
        device=spec["device"],
        beam=beam,
        threads=spec["threads"],
        lanes=spec["lanes"],
        precision=spec["precision"],
        batch_size=spec["batch_size"],
        workers=spec["workers"] or DEFAULT_WORKERS,
        search=search,
    )


def _session_info(captioner: Any) -> dict[str, Any]:
    bundle = captioner.bundle
    return {
        "model": str(bundle.path),
        "decoder": captioner.precision,
        "encoder": captioner.encoder_precision,
        "encoder_input": "pixels" if captioner.takes_pixels else "float",
        "search": captioner.search,
        "providers": captioner.providers,
        "device": captioner.device,
        "lanes": captioner.lanes,
        "intra_op_threads": captioner.threads,
    }


def _limit(s: Scenario, spec: dict[str, Any]) -> Result:
    """The encoder alone, arranged as capcli arranges it (``lanes`` batches at once) and as one
    session on all its threads; where the encoder takes pixels (CUDA) also on float input, to show
    what the pixels save; under CUDA each also with its outputs left on the GPU, as the search graph
    reads them.  The fastest is the limit."""
    import numpy as np

    from capcli.images import load
    from capcli.runtime import Captioner

    started = time.perf_counter()
    captioner = _model(spec, beam=1).captioner
    arrangements = [captioner]

    def another(lanes: int, threads: int | None, pixel_input: bool | None = None) -> Captioner:
        return Captioner(
            captioner.bundle,
            device=spec["device"],
            beam=1,
            lanes=lanes,
            threads=threads,
            precision=spec["precision"],
            pixel_input=pixel_input,
        )

    if captioner.lanes > 1 and captioner.threads is not None:
        arrangements.append(another(1, captioner.lanes * captioner.threads))
    if captioner.takes_pixels:
        arrangements.append(another(captioner.lanes, captioner.threads, pixel_input=False))
    pre = captioner.bundle.preprocess
    paths = read_paths(spec["listing"])
    size = spec["batch_size"]
    batches = {}  # ready-made (not timed), as each encoder takes them: {takes pixels: [(B, H, W, 3) or (B, 3, H, W)]}
    for pixels in {c.takes_pixels for c in arrangements}:
        arrays = [load(p, pre, pixels=pixels).array for p in paths]
        batches[pixels] = [np.stack(arrays[i : i + size]) for i in range(0, len(arrays), size)]
    del arrays
    count = len(paths)

    def name(c: Captioner) -> str:
        return f"{c.lanes}x{c.threads}" + (" pixels" if c.takes_pixels else "")

    ways = [(name(c), c, c.encode) for c in arrangements]
    if captioner.device != "cpu":
        ways += [(f"{name(c)} in place", c, c.encode_in_place) for c in arrangements]

    def encode_all(lanes: int, encode: Callable[[Any], Any], some: list[Any]) -> None:
        """Encode ``some`` batches as capcli arranges them: ``lanes`` at once."""
        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(encode, some))

    for _, c, encode in ways:  # warm-up, as timed: one batch per lane
        encode_all(c.lanes, encode, batches[c.takes_pixels][: c.lanes])
    result = Result(s.key, s.label, images=count, load_seconds=time.perf_counter() - started)
    rates = {}  # "lanes x threads[ pixels][ in place]" -> images/s
    for way, c, encode in ways:
        clock = time.perf_counter()
        encode_all(c.lanes, encode, batches[c.takes_pixels])
        seconds = time.perf_counter() - clock
        rates[way] = round(count / seconds, 3)
        if not result.seconds or seconds < result.seconds:
            result.seconds, result.info = seconds, {**_session_info(c), "arrangement": way}
    result.info["rates_by_arrangement"] = rates
    result.stages = {"encode": result.seconds}
    return result


def _read(s: Scenario, spec: dict[str, Any]) -> Result:
    """Reading alone: every path read and preprocessed by capcli's reader on the pipeline's ``workers``
    threads, nothing captioned (the arrays are dropped); also on one thread, to show how reading scales."""
    from capcli.errors import ItemError
    from capcli.sources import iter_items

    started = time.perf_counter()
    model = _model(spec, beam=1)
    reader = model.reader()

    def read(item: Any) -> bool:
        try:
            reader(item)
        except ItemError:  # counted, as capcli would write an error record
            return False
        return True

    with open(spec["listing"], "rb") as listing:
        items = list(iter_items(["-"], stdin=listing))
    for item in items[: model.workers]:  # warm-up: imports, the page cache
        read(item)
    result = Result(s.key, s.label, images=len(items), load_seconds=time.perf_counter() - started)
    rates = {}  # threads -> images/s
    for threads in sorted({1, model.workers}):
        clock = time.perf_counter()
        cpu = time.process_time()
        with ThreadPoolExecutor(threads, thread_name_prefix="capcli-read") as pool:
            failed = sum(not ok for ok in pool.map(read, items))
        seconds = time.perf_counter() - clock
        rates[str(threads)] = round(len(items) / seconds, 3)
        if threads == model.workers:
            result.seconds, result.stages, result.failed = seconds, {"read": time.process_time() - cpu}, failed
    result.info = {"workers": model.workers, "rates_by_threads": rates}
    return result


class _TimedReader:
    """A reader that sums the CPU time its threads spend reading and preprocessing.

    CPU time, not wall time: reader threads share the cores with inference, and
    their wall time would count the waits for a core too.
    """

    def __init__(self, read: Callable[[Any], Any]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self.seconds = 0.0

    def __call__(self, item: Any) -> Any:
        started = time.thread_time()
        try:
            return self._read(item)
        finally:
            spent = time.thread_time() - started
            with self._lock:
                self.seconds += spent


def _capcli(s: Scenario, spec: dict[str, Any]) -> Result:
    from capcli.pipeline import Reader, Record, caption_items
    from capcli.sources import iter_items
    from capcli.writers import open_output

    started = time.perf_counter()
    model = _model(spec, beam=s.beam, search=s.search)
    captioner = model.captioner
    batch_size = spec["batch_size"]
    read = model.reader()

    def records(listing: IO[bytes], read: Reader, count: int | None = None) -> Iterator[Record]:
        """The pipeline as `capcli caption -` runs it, on the listing's first ``count`` paths (all: None)."""
        items = itertools.islice(iter_items(["-"], stdin=listing), count)
        return caption_items(items, captioner, read, batch_size=batch_size, workers=model.workers)

    # Warm-up, as timed: the pipeline on the listing's first batch per lane (records dropped).
    with open(spec["listing"], "rb") as listing:
        clock = time.perf_counter()
        warm = sum(1 for _ in records(listing, read, captioner.lanes * batch_size))
        warm_rate = round(warm / (time.perf_counter() - clock), 3)
    captioner.seconds = {k: 0.0 for k in captioner.seconds}
    info = _session_info(captioner) | {"warm_up": {"images": warm, "images_per_s": warm_rate}}
    result = Result(s.key, s.label, load_seconds=time.perf_counter() - started, info=info, output=spec["output"])
    timed_read = _TimedReader(read)
    writer, _ = open_output(spec["output"], "jsonl", resume=False, retry_errors=False)
    write_seconds = 0.0
    with open(spec["listing"], "rb") as listing:
        clock = time.perf_counter()
        for record in records(listing, timed_read):
            at = time.perf_counter()
            writer.write(record)
            write_seconds += time.perf_counter() - at
            result.images += 1
            result.failed += record["status"] != "ok"
        writer.close()
        result.seconds = time.perf_counter() - clock
    busy = captioner.seconds["encode"] + captioner.seconds["decode"]
    result.stages = {
        "read": timed_read.seconds,
        **captioner.seconds,
        "write": write_seconds,
        "idle": max(0.0, captioner.lanes * result.seconds - busy),
    }
    return result


def _main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(_worker(spec)))


if __name__ == "__main__":
    _main()
