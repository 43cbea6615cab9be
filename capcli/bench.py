"""``capcli bench``: the limit, capcli end to end and the tutorial way, side by side in one run.

Scenarios (each in a fresh Python process, so that its peak memory is its own
and no scenario inherits another's warm state):

- ``limit``: the bundle's encoder.onnx alone on ready-made input tensors
  (the same photos, preprocessed beforehand), same batch size and session
  options as capcli: nothing end to end can beat it, since every image needs
  one encoder pass;
- ``capcli`` end to end: files on disk -> records in a JSONL file, through the
  same pieces ``capcli caption -`` runs (stdin path list, reader pool,
  batches, runtime, writer), greedy and beam 3, on the 224-px photos and on
  phone-size JPEGs (4032x3024, quality 90, with grain) generated from them;
- ``tutorial``: the same model's PyTorch checkpoint captioning one image at a
  time in eager mode, as tutorial code does (PIL, torchvision transform,
  encoder, a Python step loop), greedy and beam 3; needs torch and
  ``--checkpoint``;
- ``memory`` (opt-in, slow): peak memory end to end for 1,000 vs 20,000 inputs.

Each process times its stages: read/decode (CPU time of the reader threads,
overlapped with inference in capcli), encode and decode loop (summed over
capcli's lanes, the batches captioned at once), write, and ``idle``: lane
time spent outside the model (waiting for images, batching), where a starved
encoder would show.  Before the clock starts, every process runs its timed path
once on a few inputs, as the timed part runs it: capcli's pipeline on one
batch per lane, the limit's batches ``lanes`` at a time, the tutorial's loop
on one photo.  The first batches that run at once make onnxruntime grow its
memory arena (a few hundred MB of fresh pages: those batches run about 40%
slower); left in the timed part, that one-off cost would weigh on 200 images
and be gone on 20,000.  Model loading and warm-up are timed apart
(``load_seconds``), as in capcli's own summary.  The
ratios and targets are those of issue 6; the machine is described next to them.

The worker side runs as ``python -m capcli.bench SPEC_JSON`` and prints one
JSON result line.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from capcli.errors import FatalError

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
    kind: str  # "limit" | "capcli" | "tutorial"
    inputs: str  # "photos" | "big"
    beam: int
    count: int  # images


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
        return {"machine": self.machine, "config": self.config,
                "results": [asdict(r) for r in self.results], "ratios": [asdict(r) for r in self.ratios]}  # fmt: skip


def scenarios(cfg: BenchConfig) -> list[Scenario]:
    n = cfg.n
    out = [
        Scenario("limit", "limit (encoder only)", "limit", "photos", 1, n),
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
            out.append(Scenario(f"memory_{count}", f"memory: capcli greedy, {count:,} inputs",
                                "capcli", "photos", 1, count))  # fmt: skip
    return out


def run_bench(cfg: BenchConfig, say: Callable[[str], None] = lambda s: None) -> Report:
    """Run every scenario ``cfg.rounds`` times, round-robin; the fastest round of each, then the ratios."""
    photos = list_photos(cfg.images, cfg.n)
    todo = scenarios(cfg)
    results: dict[str, Result] = {}
    runs: dict[str, list[Result]] = {s.key: [] for s in todo}
    with tempfile.TemporaryDirectory(prefix="capcli-bench-") as tmp:
        work = Path(tmp)
        inputs = {"photos": photos}
        if cfg.big:
            say(f"writing {min(len(photos), BIG_UNIQUE)} {cfg.big_size[0]}x{cfg.big_size[1]} JPEGs (quality "
                f"{BIG_QUALITY}, with grain) from the photos")  # fmt: skip
            inputs["big"] = make_big_jpegs(photos[:BIG_UNIQUE], work / "big", cfg.big_size)
        skip = {s.key: _skip_reason(s, cfg) for s in todo}
        for round_no in range(cfg.rounds):
            for s in todo:
                if skip[s.key]:
                    continue
                say(f"[round {round_no + 1}/{cfg.rounds}] {s.label} ({s.count} images) ...")
                result = run_scenario(s, cfg, inputs[s.inputs], work / f"{s.key}-{round_no}")
                say(f"    {result.images_per_s:.2f} images/s, peak {result.peak_rss_mib:.0f} MiB")
                runs[s.key].append(result)
        for s in todo:
            results[s.key] = _fastest(runs[s.key]) if runs[s.key] else Result(s.key, s.label, skipped=skip[s.key])
        _compare_captions(results)
    ordered = [results[s.key] for s in todo]
    return Report(machine_info(results), _config_dict(cfg), ordered, ratios(results))


def list_photos(folder: Path, n: int) -> list[str]:
    """The first ``n`` images of ``folder`` in capcli's walk order (all of them when fewer)."""
    from capcli.sources import iter_items

    if not folder.is_dir():
        raise FatalError(f"no image folder at {folder} (pass --images DIR)")
    paths = [item.path for item in itertools.islice(
        (i for i in iter_items([str(folder)]) if i.path and i.error is None), n)]  # fmt: skip
    if not paths:
        raise FatalError(f"no images in {folder}")
    return paths  # type: ignore[return-value]


def make_big_jpegs(photos: list[str], folder: Path, size: tuple[int, int]) -> list[str]:
    """Upscale each photo to ``size``, add grain, save it as a quality-90 JPEG: phone-size inputs.

    An upscaled photo is smoother than a real one and its JPEG half the size
    (1.0 vs 2.6 MB at 4032x3024), and JPEG decoding time follows the size of
    the compressed data, even at a reduced draft scale: the grain (Gaussian,
    sigma 6 levels) makes the files as costly to decode as a phone's.
    """
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for i, path in enumerate(photos):
        target = folder / f"big-{i:04d}.jpg"
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        pixels += rng.normal(0.0, BIG_GRAIN, size=pixels.shape).astype(np.int16)  # (H, W, 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, "JPEG", quality=BIG_QUALITY)
        out.append(str(target))
    return out


def run_scenario(s: Scenario, cfg: BenchConfig, paths: list[str], folder: Path) -> Result:
    """One scenario in a fresh process; its result line parsed back."""
    folder.mkdir(parents=True)
    listing = folder / "inputs.txt"
    with listing.open("w", encoding="utf-8", errors="surrogateescape") as f:
        for path in itertools.islice(itertools.cycle(paths), s.count):
            f.write(path + "\n")
    spec = {"scenario": asdict(s), "listing": str(listing), "output": str(folder / "records.jsonl"),
            "model": cfg.model, "batch_size": cfg.batch_size, "workers": cfg.workers, "device": cfg.device,
            "precision": cfg.precision, "threads": cfg.threads, "lanes": cfg.lanes,
            "checkpoint": cfg.checkpoint}  # fmt: skip
    before = _cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "capcli.bench", json.dumps(spec)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    after = _cpu_seconds()
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FatalError(f"benchmark scenario {s.key!r} failed (exit {proc.returncode}): {tail}")
    data = json.loads(lines[-1])
    result = Result(**data)
    result.rates = [result.images_per_s]
    if before is not None and after is not None:
        # Cores that other processes kept busy meanwhile: the machine's busy time minus the scenario's own.
        others = (after[0] - before[0]) - (after[1] - before[1])
        result.info["other_cores"] = round(max(0.0, others) / wall, 2)
    return result


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine was busy, CPU seconds of this process's finished children)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest time is inside user)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def _skip_reason(s: Scenario, cfg: BenchConfig) -> str | None:
    if s.kind != "tutorial":
        return None
    if cfg.checkpoint is None:
        return "needs the model's PyTorch checkpoint: pass --checkpoint PATH"
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        return f"needs torch and torchvision ({exc.name} is missing): pip install 'capcli[train]'"
    return None


def _fastest(runs: list[Result]) -> Result:
    """The fastest round (its stages), every round's rate, the largest peak memory.

    As timeit takes the minimum: other work on a shared machine only ever
    slows a round down, so the fastest one is the best estimate of the
    scenario's own speed, and taking it for every scenario keeps ratios fair.
    """
    chosen = max(runs, key=lambda r: r.images_per_s)
    chosen.rates = [r.images_per_s for r in runs]
    chosen.peak_rss_mib = max(r.peak_rss_mib for r in runs)
    return chosen


def _compare_captions(results: dict[str, Result]) -> None:
    """How often the tutorial's greedy captions equal capcli's: proof that both ran the same model."""
    a, b = results.get("greedy"), results.get("tutorial_greedy")
    if not (a and b and a.output and b.output and Path(a.output).is_file() and Path(b.output).is_file()):
        return
    mine, theirs = _captions(Path(a.output)), _captions(Path(b.output))
    common = [k for k in theirs if k in mine]
    if common:
        same = sum(mine[k] == theirs[k] for k in common)
        b.info["same_captions_as_capcli_greedy"] = round(same / len(common), 4)


def _captions(path: Path) -> dict[tuple[int, str], str]:
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            out[(record["index"], record["source"])] = record["caption"]
    return out


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
        ratio("capcli beam 3 / tutorial beam 3", rate("beam3"), rate("tutorial_beam3"), ">= 3", lambda v: v >= 3),
        ratio("capcli greedy / tutorial greedy", rate("greedy"), rate("tutorial_greedy"), ">= 3", lambda v: v >= 3),
    ]
    if "beam3_big" in results:
        out.append(ratio("capcli beam 3: big JPEGs / photos", rate("beam3_big"), rate("beam3"), ">= 0.5",
                         lambda v: v >= 0.5))  # fmt: skip
    memory = sorted(((int(k.split("_")[1]), r) for k, r in results.items() if k.startswith("memory_") and not r.skipped),
                    key=lambda pair: pair[0])  # fmt: skip
    if len(memory) == 2:
        (few, small), (many, large) = memory
        out.append(ratio(f"peak memory: {many:,} / {few:,} inputs", large.peak_rss_mib, small.peak_rss_mib,
                         "<= 1.10", lambda v: v <= 1.10))  # fmt: skip
    return out


def machine_info(results: dict[str, Result]) -> dict[str, Any]:
    """What the figures came from: CPU, cores, memory, versions, providers, GPU."""
    import numpy
    import onnxruntime as ort
    import PIL

    from capcli import __version__
    from capcli.machine import cpu_name
    from capcli.runtime import physical_cores

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "capcli": __version__,
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    # What the sessions really used, as the workers reported it; capcli's own arrangement first.
    for r in sorted(results.values(), key=lambda r: r.key != "beam3"):
        for key in ("model", "decoder", "providers", "device", "lanes", "intra_op_threads", "torch", "torch_threads",
                    "torch_device"):
            if key in r.info:
                info.setdefault(key, r.info[key])
    if any("CUDA" in p for p in info.get("providers", [])):
        info["gpu"] = _gpu_name()
    return info


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = int(f.readline().split()[1])
        return round(kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _config_dict(cfg: BenchConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data["images"] = str(cfg.images)
    return data


# -- worker side: one scenario per process -----------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _read_paths(listing: str) -> list[str]:
    with open(listing, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n") for line in f]


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    scenario = Scenario(**spec["scenario"])
    run = {"limit": _limit, "capcli": _capcli, "tutorial": _tutorial}[scenario.kind]
    result = run(scenario, spec)
    result.peak_rss_mib = round(peak_rss_mib(), 1)
    result.images_per_s = round(result.images / result.seconds, 3) if result.seconds > 0 else 0.0
    result.stages = {k: round(v, 4) for k, v in result.stages.items()}
    return asdict(result)


def _model(spec: dict[str, Any], beam: int) -> Any:
    """The model as ``capcli.load`` gives it to ``capcli caption``."""
    from capcli.api import load
    from capcli.pipeline import DEFAULT_WORKERS

    return load(spec["model"], device=spec["device"], beam=beam, threads=spec["threads"], lanes=spec["lanes"],
                precision=spec["precision"], batch_size=spec["batch_size"],
                workers=spec["workers"] or DEFAULT_WORKERS)  # fmt: skip


def _session_info(captioner: Any) -> dict[str, Any]:
    bundle = captioner.bundle
    return {"model": str(bundle.path), "decoder": captioner.precision,
            "providers": captioner.providers, "device": captioner.device, "lanes": captioner.lanes,
            "intra_op_threads": captioner.threads}  # fmt: skip


def _limit(s: Scenario, spec: dict[str, Any]) -> Result:
    """The encoder alone, arranged as capcli arranges it (``lanes`` batches at once) and as one
    session on all its threads; the faster of the two is the limit."""
    import numpy as np

    from capcli.images import load
    from capcli.runtime import Captioner

    started = time.perf_counter()
    captioner = _model(spec, beam=1).captioner
    arrangements = [captioner]
    if captioner.lanes > 1 and captioner.threads is not None:
        arrangements.append(Captioner(captioner.bundle, device=spec["device"], beam=1, lanes=1,
                                      threads=captioner.lanes * captioner.threads))  # fmt: skip
    pre = captioner.bundle.preprocess
    arrays = [load(p, pre).array for p in _read_paths(spec["listing"])]  # ready-made: not timed
    size = spec["batch_size"]
    batches = [np.stack(arrays[i : i + size]) for i in range(0, len(arrays), size)]  # each (B, 3, H, W)
    count = len(arrays)
    del arrays

    def encode_all(c: Captioner, some: list[Any]) -> None:
        """Encode ``some`` batches as capcli arranges them: ``c.lanes`` at once."""
        with ThreadPoolExecutor(c.lanes) as lanes:
            list(lanes.map(c.encode, some))

    for c in arrangements:  # warm-up, as timed: one batch per lane
        encode_all(c, batches[: c.lanes])
    result = Result(s.key, s.label, images=count, load_seconds=time.perf_counter() - started)
    rates = {}  # "lanes x threads" -> images/s
    for c in arrangements:
        clock = time.perf_counter()
        encode_all(c, batches)
        seconds = time.perf_counter() - clock
        rates[f"{c.lanes}x{c.threads}"] = round(count / seconds, 3)
        if not result.seconds or seconds < result.seconds:
            result.seconds, result.info = seconds, _session_info(c)
    result.info["rates_by_arrangement"] = rates
    result.stages = {"encode": result.seconds}
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
    model = _model(spec, beam=s.beam)
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
    result.stages = {"read": timed_read.seconds, **captioner.seconds, "write": write_seconds,
                     "idle": max(0.0, captioner.lanes * result.seconds - busy)}  # fmt: skip
    return result


def _tutorial(s: Scenario, spec: dict[str, Any]) -> Result:
    import torch
    from PIL import Image
    from torchvision import transforms

    from capcli.text import detokenize
    from capcli.train.checkpoint import load_checkpoint

    started = time.perf_counter()
    device = _torch_device(spec["device"])
    ckpt = load_checkpoint(spec["checkpoint"])
    model, vocab = ckpt.model.eval().to(device), ckpt.vocab
    pre = model.backbone.spec.preprocess
    transform = transforms.Compose([
        transforms.Resize(pre.size, interpolation=transforms.InterpolationMode(pre.interpolation)),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])  # fmt: skip
    from capcli.decode import SearchSpec

    search = _torch_greedy if s.beam == 1 else _torch_beam
    # capcli's rules, so that both ways caption alike; the tutorial loops apply them in torch.
    rules = SearchSpec.runtime(vocab, model.config.max_len)

    def caption(path: str) -> tuple[str, list[float]]:
        t0 = time.perf_counter()
        with Image.open(path) as image:
            x = transform(image.convert("RGB")).unsqueeze(0).to(device)  # (1, 3, H, W)
        t1 = time.perf_counter()
        features = model.features(model.backbone_grid(x))  # (1, L, D)
        keys, state = model.decoder.init(features)  # (1, L, A), each (1, H)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the stage ends when the GPU is done
        t2 = time.perf_counter()
        ids = search(model, features, keys, state, rules, s.beam)
        t3 = time.perf_counter()
        return detokenize([vocab.tokens[i] for i in ids]), [t1 - t0, t2 - t1, t3 - t2]

    paths = _read_paths(spec["listing"])
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "torch_device": str(device)}
    stages = dict.fromkeys(("read", "encode", "decode", "write"), 0.0)
    with torch.no_grad(), open(spec["output"], "w", encoding="utf-8") as out:
        caption(paths[0])  # warm-up
        result = Result(s.key, s.label, load_seconds=time.perf_counter() - started, info=info, output=spec["output"])
        clock = time.perf_counter()
        for index, path in enumerate(paths):
            text, spent = caption(path)
            at = time.perf_counter()
            out.write(json.dumps({"index": index, "source": path, "status": "ok", "caption": text}) + "\n")
            out.flush()
            for name, seconds in zip(stages, [*spent, time.perf_counter() - at]):
                stages[name] += seconds
        result.seconds = time.perf_counter() - clock
    result.images = len(paths)
    result.stages = stages
    return result


def _torch_device(device: str) -> Any:
    """The tutorial runs where capcli is asked to: CUDA for cuda[:N], and for auto when torch sees a GPU."""
    import torch

    from capcli.runtime import parse_device

    kind, index = parse_device(device)
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    return torch.device(f"cuda:{index}" if use_cuda else "cpu")


def _history_rules(logprobs: Any, histories: list[list[int]], rules: Any) -> None:
    """capcli's rules that look back (no repeated trigram, no dangling last word) on a torch (rows, V) tensor."""
    import numpy as np
    import torch

    from capcli.decode import block_dangling_end, block_repeats

    if not histories[0]:
        return
    words = np.array(histories, dtype=np.int64)  # (rows, t)
    banned = np.zeros(tuple(logprobs.shape))
    block_repeats(banned, words, rules.no_repeat_ngram)
    block_dangling_end(banned, words, rules)
    logprobs[torch.from_numpy(np.isinf(banned)).to(logprobs.device)] = -float("inf")


def _torch_greedy(model: Any, features: Any, keys: Any, state: Any, rules: Any, beam: int) -> list[int]:
    """Tutorial greedy decoding: one token per step, Python loop, until <end>."""
    import torch

    token = torch.tensor([rules.start_id], device=features.device)
    ids: list[int] = []
    for t in range(rules.max_len):
        logits, state, _ = model.decoder.step(token, state, features, keys)
        logprobs = torch.log_softmax(logits, dim=1)  # (1, V)
        logprobs[:, list(rules.banned)] = -float("inf")
        if t == 0:
            logprobs[:, rules.end_id] = -float("inf")
        _history_rules(logprobs, [ids], rules)
        token = logprobs.argmax(dim=1)  # (1,)
        if int(token) == rules.end_id:
            break
        ids.append(int(token))
    return ids


def _torch_beam(model: Any, features: Any, keys: Any, state: Any, rules: Any, beam: int) -> list[int]:
    """Tutorial beam search for one image (the sgrvinod way: the beam shrinks as hypotheses end)."""
    import torch

    k, device = beam, features.device  # features (1, L, D) and keys (1, A, L) serve all k rows
    state = tuple(s.expand(k, -1).contiguous() for s in state)  # each (k, H)
    tokens = torch.full((k,), rules.start_id, device=device)
    scores = torch.zeros(k, device=device)
    scores[1:] = -float("inf")  # the k rows start identical: only one is live
    seqs: list[list[int]] = [[] for _ in range(k)]
    done: list[tuple[float, list[int]]] = []
    for t in range(rules.max_len + 1):
        logits, state, _ = model.decoder.step(tokens, state, features, keys)
        logprobs = torch.log_softmax(logits, dim=1)  # (k, V)
        logprobs[:, list(rules.banned)] = -float("inf")
        if t == 0:
            logprobs[:, rules.end_id] = -float("inf")
        if t == rules.max_len:
            end = logprobs[:, rules.end_id].clone()
            logprobs.fill_(-float("inf"))
            logprobs[:, rules.end_id] = end
        _history_rules(logprobs, seqs, rules)
        v = logprobs.size(1)
        top, flat = (scores[:, None] + logprobs).view(-1).topk(k)  # (k,)
        rows, words = flat // v, flat % v
        live = []
        for score, row, word in zip(top.tolist(), rows.tolist(), words.tolist()):
            if word == rules.end_id:
                done.append((score / (len(seqs[row]) + 1) ** rules.length_penalty, seqs[row]))
            else:
                live.append((score, row, word))
        k = len(live)
        if k == 0:
            break
        keep = torch.tensor([row for _, row, _ in live], device=device)
        seqs = [seqs[row] + [word] for _, row, word in live]
        scores = torch.tensor([score for score, _, _ in live], device=device)
        tokens = torch.tensor([word for _, _, word in live], device=device)
        state = tuple(s[keep] for s in state)
    return max(done, key=lambda d: d[0])[1] if done else seqs[0]


def _main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(_worker(spec)))


if __name__ == "__main__":
    _main()
