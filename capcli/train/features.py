"""A disk cache of the frozen backbone's output, computed once per image list.

Training never runs the frozen part of the backbone more than once per image:
its output (the region grid for a fully frozen backbone, or the input of the
fine-tuned top blocks) is computed in batches, stored as float16
``<key>.npy`` plus a ``<key>.json`` sidecar, and reused across epochs and runs.

The key hashes everything the numbers depend on: the frozen module's weights,
the preprocessing, and the image list (path, size, mtime).  Both files are
written under temporary names and ``os.replace``d, the sidecar last, so a
half-written cache is never found.  A new entry replaces one made for the
same paths before their files changed, so the cache does not grow by a data
set's worth each time.  Files copied anew with the same bytes (new mtimes, as
after a copy without timestamps) do not cost a recomputation: each sidecar
holds its images' content digests, and an entry whose digests still match
the files is renamed to the new key.  Images that fail to decode get zero rows
and are listed in the sidecar (``failed``) for the trainer to drop.

Pixels are read with :mod:`capcli.images`, the very code the runtime uses, so
training and captioning see identical inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from capcli import images
from capcli.atomic import atomic_write_text, replacing
from capcli.bundle import Preprocess
from capcli.errors import ItemError

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "capcli" / "features"


@dataclass(frozen=True)
class CachedFeatures:
    array: np.ndarray  # (N, C, h, w) float16 memory map, row i = image i
    failed: tuple[int, ...]  # rows whose image could not be decoded (zeros)
    path: Path


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_keys(identity: dict[str, Any], preprocess: dict[str, Any], paths: Sequence[Path]) -> tuple[str, str]:
    """The entry's key (over each image's path, size and mtime) and the key of the paths alone, which the
    entries made for earlier states of the same files share."""
    files = []
    for path in paths:
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])

    def digest(images: list[Any]) -> str:
        blob = json.dumps({"version": FORMAT_VERSION, "module": identity, "preprocess": preprocess, "images": images})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    return digest(files), digest([f[0] for f in files])


def cached_features(
    module: nn.Module,
    identity: dict[str, Any],
    preprocess: Preprocess,
    paths: Sequence[Path],
    *,
    cache_dir: Path,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    console: Console | None = None,
    label: str = "features",
) -> CachedFeatures:
    """``module``'s float16 output for every image in ``paths``, from the cache or computed now.

    ``identity`` names the module (e.g. backbone, cut, weights fingerprint);
    ``preprocess`` is applied by ``capcli.images`` exactly as at caption time.
    """
    pre_dict = preprocess.to_dict()
    key, paths_key = cache_keys(identity, pre_dict, paths)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    found = _open(npy, meta, len(paths))
    if found is not None:
        if console:
            console.print(f"{label}: {len(paths):,} images from cache {npy}")
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    digests = _content_digests(paths)
    before = _same_content(cache_dir, paths_key, digests)
    if before is not None:  # the same bytes under new mtimes: the entry is renamed, not recomputed
        sidecar = {**json.loads(before.read_text()), "key": key}
        os.replace(before.with_suffix(".npy"), npy)
        atomic_write_text(meta, json.dumps(sidecar, indent=1))
        before.unlink()
        if console:
            console.print(f"{label}: {len(paths):,} images from cache {npy} (files copied anew, same content)")
    else:
        failed = _compute(module, preprocess, paths, npy, device, batch_size, workers, console, label)
        sidecar = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "paths_key": paths_key,
            "count": len(paths),
            "failed": failed,
            "module": identity,
            "preprocess": pre_dict,
            "digests": digests,
        }
        atomic_write_text(meta, json.dumps(sidecar, indent=1))
    found = _open(npy, meta, len(paths))
    assert found is not None
    dropped = _drop_superseded(cache_dir, key, paths_key)
    if console and dropped:
        console.print(f"{label}: removed {dropped} cache entries made before these images' files changed")
    return found


def _content_digests(paths: Sequence[Path]) -> list[str]:
    """sha256 (first 32 hex digits) of each file's bytes: 0.7 s for Flickr8k's 7,000 photos, against minutes of backbone."""
    return [hashlib.sha256(path.read_bytes()).hexdigest()[:32] for path in paths]


def _same_content(cache_dir: Path, paths_key: str, digests: list[str]) -> Path | None:
    """The sidecar of an entry made for the same paths (``paths_key``) whose images had these ``digests``."""
    for meta in cache_dir.glob("*.json"):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if info.get("paths_key") == paths_key and info.get("digests") == digests and meta.with_suffix(".npy").is_file():
            return meta
    return None


def _drop_superseded(cache_dir: Path, key: str, paths_key: str) -> int:
    """Remove the entries other than ``key`` made for the same paths (``paths_key``); how many went."""
    dropped = 0
    for meta in cache_dir.glob("*.json"):
        if meta.stem == key:
            continue
        try:
            superseded = json.loads(meta.read_text()).get("paths_key") == paths_key
        except (OSError, ValueError):
            continue
        if superseded:
            meta.unlink(missing_ok=True)  # the sidecar first: an entry without one is never read
            meta.with_suffix(".npy").unlink(missing_ok=True)
            dropped += 1
    return dropped


def _open(npy: Path, meta: Path, count: int) -> CachedFeatures | None:
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        array = np.load(npy, mmap_mode="c")  # copy-on-write: torch can wrap it; the file is never changed
    except (OSError, ValueError):
        return None
    if info.get("format_version") != FORMAT_VERSION or info.get("count") != count or array.shape[0] != count:
        return None
    return CachedFeatures(array, tuple(info.get("failed", [])), npy)


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], preprocess: Preprocess) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return torch.from_numpy(images.load(str(self.paths[i]), self.preprocess).array), True
        except ItemError:
            h, w = self.preprocess.size
            return torch.zeros(3, h, w), False


@torch.inference_mode()
def _compute(
    module: nn.Module,
    preprocess: Preprocess,
    paths: Sequence[Path],
    npy: Path,
    device: torch.device,
    batch_size: int,
    workers: int,
    console: Console | None,
    label: str,
) -> list[int]:
    module = module.eval().to(device)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its own seed source: a cache hit or miss leaves the global RNG alone
    )
    failed: list[int] = []
    out = None
    columns = (TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with replacing(npy) as tmp:
        with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
            task = progress.add_task(label, total=len(paths))
            row = 0
            for batch, ok in loader:
                y = module(batch.to(device, non_blocking=True))  # (B, C, h, w)
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(paths), *y.shape[1:]))
                y = y.to(torch.float16).cpu().numpy()
                y[~ok.numpy()] = 0
                out[row : row + len(y)] = y
                failed += [row + i for i in np.flatnonzero(~ok.numpy()).tolist()]
                row += len(y)
                progress.advance(task, len(y))
        assert out is not None, "no images to compute features for"
        out.flush()
        del out
    return failed
