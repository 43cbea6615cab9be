"""A split made ready for training: cached frozen-backbone output, captions as ids, batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from capcli.datasets import Sample, Split
from capcli.text import Vocab, tokenize
from capcli.train.backbones import preprocess_for
from capcli.train.features import cached_features


@dataclass
class TrainData:
    samples: list[Sample]  # the images that decoded
    cache: torch.Tensor  # (N_cached, C, h, w) float16 frozen-backbone output: in GPU memory, or a CPU memory map
    rows: torch.Tensor  # (N_images,) cache row of each sample
    captions: torch.Tensor  # (N_captions, max_len + 2) long on the device: <start> words <end> <pad>...
    lengths: torch.Tensor  # (N_captions,) on the CPU: tokens including <start> and <end>
    image_of: torch.Tensor  # (N_captions,) on the CPU: sample index of each caption

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Cached frozen output of samples ``images`` as float32 on the training device."""
        x = self.cache[self.rows[images.to(self.rows.device)]]  # (B, C, h, w) float16
        return x.to(self.captions.device, non_blocking=True).float()


def prepare(
    split: Split,
    vocab: Vocab,
    backbone: str,
    max_len: int,
    frozen: nn.Module,
    identity: dict[str, Any],
    *,
    cache_dir: Path,
    workers: int,
    device: torch.device,
    console: Console,
) -> TrainData:
    """Cache ``frozen``'s output for the split's images and encode its captions (cut at ``max_len`` words)."""
    cache = cached_features(
        frozen,
        identity,
        preprocess_for(backbone),
        [s.image for s in split.samples],
        cache_dir=cache_dir,
        device=device,
        workers=workers,
        console=console,
        label=f"{split.split} features",
    )
    failed = set(cache.failed)
    keep = [i for i in range(len(split.samples)) if i not in failed]
    if cache.failed:
        console.print(f"{split.split}: {len(cache.failed):,} images could not be decoded and are left out")
    samples = [split.samples[i] for i in keep]
    # On a GPU the whole cache moves to its memory once; on the CPU batches are gathered from the map.
    inputs = torch.from_numpy(cache.array).to(device)  # (N, C, h, w) float16
    rows, image_of = [], []
    for i, sample in enumerate(samples):
        for caption in sample.captions:
            ids = vocab.encode(tokenize(caption)[:max_len])
            rows.append([vocab.start_id, *ids, vocab.end_id])
            image_of.append(i)
    captions = torch.zeros(len(rows), max_len + 2, dtype=torch.long)  # <pad> = 0
    for r, ids in enumerate(rows):
        captions[r, : len(ids)] = torch.tensor(ids)
    lengths = torch.tensor([len(ids) for ids in rows])
    # Batch planning stays on the CPU (no GPU syncs); only the caption ids live on the device.
    return TrainData(
        samples, inputs, torch.tensor(keep, device=inputs.device), captions.to(device), lengths, torch.tensor(image_of)
    )


def batches(data: TrainData, batch_size: int, by_image: bool, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Caption rows of each step of an epoch: every caption once.

    The order depends only on (seed, epoch), so a resumed run repeats it.
    ``by_image``: whole images with all their captions (about ``batch_size``
    captions a step), so one backbone pass per image serves all its captions.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n_captions, n_images = len(data.captions), len(data.samples)
    if not by_image:
        order = torch.randperm(n_captions, generator=generator)
        for start in range(0, n_captions, batch_size):
            yield order[start : start + batch_size]
        return
    per_step = max(1, round(batch_size * n_images / n_captions))
    by: list[list[int]] = [[] for _ in range(n_images)]
    for row, image in enumerate(data.image_of.tolist()):
        by[image].append(row)
    order = torch.randperm(n_images, generator=generator).tolist()
    for start in range(0, n_images, per_step):
        yield torch.tensor([row for image in order[start : start + per_step] for row in by[image]])
