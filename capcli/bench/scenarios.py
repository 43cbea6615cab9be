"""The scenarios of ``capcli bench``, its configuration and results, and the ratios between them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

BIG_SIZE = (4032, 3024)  # a 12-megapixel phone photo, landscape
BIG_QUALITY = 90
BIG_GRAIN = 6.0  # standard deviation of the noise added to the upscaled photos, in 8-bit levels
BIG_UNIQUE = 32  # distinct big JPEGs generated; the input list cycles through them
MEMORY_COUNTS = (1_000, 20_000)
STAGES = ("read", "encode", "decode", "write", "idle")


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    kind: str  # "limit" | "read" | "capcli" | "tutorial"
    inputs: str  # "photos" | "big"
    beam: int
    count: int  # images
    search: str = "auto"  # capcli's decode loop: numpy | graph | auto (see capcli.graph_search)


@dataclass
class BenchConfig:
    model: str | None  # bundle directory; None: $CAPCLI_MODEL, then the packaged default
    images: Path  # folder of photos (the 224-px Flickr8k ones)
    n: int = 200
    batch_size: int = 16
    workers: int | None = None  # reader threads; None: capcli's default
    device: str = "auto"
    precision: str = "auto"  # capcli's decoder: auto uses the bundle's int8 one on the CPU when it has one
    threads: int | None = None  # onnxruntime intra-op threads per lane; None: the runtime's choice
    lanes: int | None = None  # batches captioned at once; None: the runtime's choice
    checkpoint: str | None = None  # PyTorch checkpoint for the tutorial way
    big: bool = True  # the 12-MP scenario
    big_size: tuple[int, int] = BIG_SIZE
    memory: bool = False
    memory_counts: tuple[int, int] = MEMORY_COUNTS
    rounds: int = 1  # scenarios run round-robin this many times; each one's fastest round is reported
    search: str = "auto"  # the capcli scenarios' decode loop; "both": numpy, plus greedy and beam 3 by the graph


@dataclass
class Result:
    key: str
    label: str
    images: int = 0
    images_per_s: float = 0.0
    seconds: float = 0.0  # wall time of the timed part
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (read: summed over threads)
    peak_rss_mib: float = 0.0
    load_seconds: float = 0.0  # model loading and warm-up, not in ``seconds``
    failed: int = 0  # error records
    rates: list[float] = field(default_factory=list)  # images/s of each round
    info: dict[str, Any] = field(default_factory=dict)  # providers, threads, ...
    skipped: str | None = None  # why this scenario did not run
    output: str | None = None  # records file (the parent compares captions)


@dataclass
class Ratio:
    name: str
    value: float | None
    target: str  # e.g. ">= 0.85"; "" for information only
    ok: bool | None  # None: no target or not measured


@dataclass
class Report:
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[Result]
    ratios: list[Ratio]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "config": self.config,
            "results": [asdict(r) for r in self.results],
            "ratios": [asdict(r) for r in self.ratios],
        }


def scenarios(cfg: BenchConfig) -> list[Scenario]:
    n = cfg.n
    out = [
        Scenario("limit", "limit (encoder only)", "limit", "photos", 1, n),
        Scenario("read", "reading alone (no model)", "read", "photos", 1, n),
        Scenario("greedy", "capcli greedy", "capcli", "photos", 1, n),
        Scenario("beam3", "capcli beam 3", "capcli", "photos", 3, n),
    ]
    if cfg.big:
        w, h = cfg.big_size
        out.append(Scenario("beam3_big", f"capcli beam 3, {w}x{h} JPEGs", "capcli", "big", 3, n))
    out += [
        Scenario("tutorial_greedy", "tutorial greedy", "tutorial", "photos", 1, n),
        Scenario("tutorial_beam3", "tutorial beam 3", "tutorial", "photos", 3, n),
    ]
    if cfg.memory:
        for count in cfg.memory_counts:
            out.append(
                Scenario(f"memory_{count}", f"memory: capcli greedy, {count:,} inputs", "capcli", "photos", 1, count)
            )
    if cfg.search != "auto":
        out = [replace(s, search="numpy" if cfg.search == "both" else cfg.search) for s in out]
    if cfg.search == "both":  # the graph's scenarios run round-robin with the numpy ones: fair ratios
        out += [
            Scenario("greedy_graph", "capcli greedy, search graph", "capcli", "photos", 1, n, search="graph"),
            Scenario("beam3_graph", "capcli beam 3, search graph", "capcli", "photos", 3, n, search="graph"),
        ]
    return out


def fastest(runs: list[Result]) -> Result:
    """The fastest round (its stages), every round's rate, the largest peak memory.

    As timeit takes the minimum: other work on a shared machine only ever
    slows a round down, so the fastest one is the best estimate of the
    scenario's own speed, and taking it for every scenario keeps ratios fair.
    """
    chosen = max(runs, key=lambda r: r.images_per_s)
    chosen.rates = [r.images_per_s for r in runs]
    chosen.peak_rss_mib = max(r.peak_rss_mib for r in runs)
    return chosen


def ratios(results: dict[str, Result]) -> list[Ratio]:
    def rate(key: str) -> float | None:
        r = results.get(key)
        return r.images_per_s if r and not r.skipped and r.images_per_s > 0 else None

    def ratio(name: str, num: float | None, den: float | None, target: str, passes: Callable[[float], bool]) -> Ratio:
        if num is None or den is None:
            return Ratio(name, None, target, None)
        value = num / den
        return Ratio(name, round(value, 3), target, passes(value) if target else None)

    out = [
        ratio("capcli beam 3 / limit", rate("beam3"), rate("limit"), ">= 0.85", lambda v: v >= 0.85),
        ratio("capcli greedy / limit", rate("greedy"), rate("limit"), "", bool),
        # >= 1: the readers keep up with the encoder (on a GPU the question is whether they do at all)
        ratio("reading alone / limit", rate("read"), rate("limit"), ">= 1", lambda v: v >= 1),
        ratio("capcli beam 3 / tutorial beam 3", rate("beam3"), rate("tutorial_beam3"), ">= 3", lambda v: v >= 3),
        ratio("capcli greedy / tutorial greedy", rate("greedy"), rate("tutorial_greedy"), ">= 3", lambda v: v >= 3),
    ]
    for beam in ("greedy", "beam3"):
        if f"{beam}_graph" in results:
            name = f"capcli {beam.replace('beam3', 'beam 3')}: search graph / numpy"
            out.append(ratio(name, rate(f"{beam}_graph"), rate(beam), "", bool))
    if "beam3_big" in results:
        out.append(
            ratio("capcli beam 3: big JPEGs / photos", rate("beam3_big"), rate("beam3"), ">= 0.5", lambda v: v >= 0.5)
        )
    memory = sorted(
        ((int(k.split("_")[1]), r) for k, r in results.items() if k.startswith("memory_") and not r.skipped),
        key=lambda pair: pair[0],
    )
    if len(memory) == 2:
        (few, small), (many, large) = memory
        out.append(
            ratio(
                f"peak memory: {many:,} / {few:,} inputs",
                large.peak_rss_mib,
                small.peak_rss_mib,
                "<= 1.10",
                lambda v: v <= 1.10,
            )
        )
    return out


def read_paths(listing: str) -> list[str]:
    """The input paths a scenario's listing file holds, one a line."""
    with open(listing, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n") for line in f]
