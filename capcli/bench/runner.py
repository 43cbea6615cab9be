"""The parent side of ``capcli bench``: inputs, one fresh worker process per scenario and round, the report."""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from capcli.bench.scenarios import (
    BIG_GRAIN,
    BIG_QUALITY,
    BIG_UNIQUE,
    BenchConfig,
    Report,
    Result,
    Scenario,
    fastest,
    ratios,
    scenarios,
)
from capcli.errors import FatalError


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
            say(
                f"writing {min(len(photos), BIG_UNIQUE)} {cfg.big_size[0]}x{cfg.big_size[1]} JPEGs (quality "
                f"{BIG_QUALITY}, with grain) from the photos"
            )
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
            results[s.key] = fastest(runs[s.key]) if runs[s.key] else Result(s.key, s.label, skipped=skip[s.key])
        _compare_captions(results)
    ordered = [results[s.key] for s in todo]
    return Report(machine_info(results), _config_dict(cfg), ordered, ratios(results))


def list_photos(folder: Path, n: int) -> list[str]:
    """The first ``n`` images of ``folder`` in capcli's walk order (all of them when fewer)."""
    from capcli.sources import iter_items

    if not folder.is_dir():
        raise FatalError(f"no image folder at {folder} (pass --images DIR)")
    paths = [
        item.path for item in itertools.islice((i for i in iter_items([str(folder)]) if i.path and i.error is None), n)
    ]
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
    spec = {
        "scenario": asdict(s),
        "listing": str(listing),
        "output": str(folder / "records.jsonl"),
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "workers": cfg.workers,
        "device": cfg.device,
        "precision": cfg.precision,
        "threads": cfg.threads,
        "lanes": cfg.lanes,
        "checkpoint": cfg.checkpoint,
    }
    before = _cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "capcli.bench.worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
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
        for key in (
            "model",
            "decoder",
            "providers",
            "device",
            "lanes",
            "intra_op_threads",
            "torch",
            "torch_threads",
            "torch_device",
        ):
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
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _config_dict(cfg: BenchConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data["images"] = str(cfg.images)
    return data
