"""Training objectives: what one step's loss is.

- cross-entropy (teacher forcing) over the words, padding masked, optional
  label smoothing, plus the doubly stochastic attention penalty
  ``lambda * mean((1 - sum_t alpha)^2)``: :func:`cross_entropy_step`;
- self-critical sequence training on CIDEr-D (:mod:`capcli.train.scst`):
  :func:`self_critical_step`.

Both return a :class:`StepLoss` the epoch loop (:mod:`capcli.train.loop`) calls
on each global batch; under several processes each rank computes its share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from capcli.text import Vocab
from capcli.train import scst
from capcli.train.data import TrainData
from capcli.train.distributed import Ranks
from capcli.train.model import CaptionModel, region_grid
from capcli.train.options import TrainOptions
from capcli.train.reward import CiderD


def grid(tuned: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Cached frozen output (B, C', h', w') -> region grid (B, L, C) through the tuned stages."""
    return region_grid(tuned(inputs))  # (B, L, C)


def autocast(device: torch.device):
    # bf16 on CUDA: no loss scaling needed; the CPU stays in float32.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class Forward(nn.Module):
    """Cached frozen output -> logits: the tuned backbone stages and the captioner as one module (for DDP)."""

    def __init__(self, model: CaptionModel, tuned: nn.Module) -> None:
        super().__init__()
        self.model, self.tuned = model, tuned

    def forward(
        self, inputs: torch.Tensor, local: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (N, C', h', w') of N images; local (B,) image of each caption; captions (B, T)."""
        regions = grid(self.tuned, inputs)[local]  # (B, L, C)
        return self.model(regions, captions)  # (B, T-1, V), (B, T-1, L)


def losses(
    forward: nn.Module, data: TrainData, rows: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over caption ``rows`` (a CPU tensor): (token cross-entropy, attention penalty per caption).

    Sums, not means, so that a batch split across processes adds up to the
    whole batch's loss; the caller divides by the whole batch's counts.
    """
    device = data.captions.device
    images, local = torch.unique(data.image_of[rows], return_inverse=True)
    length = int(data.lengths[rows].max())
    captions = data.captions[rows.to(device), :length]  # (B, T)
    with autocast(device):
        logits, alphas = forward(data.inputs(images), local.to(device), captions)  # (B, T-1, V), (B, T-1, L)
    targets = captions[:, 1:]  # (B, T-1)
    xent = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=0, label_smoothing=label_smoothing, reduction="sum"
    )
    mask = (targets != 0).unsqueeze(2)  # (B, T-1, 1): padding steps attend to nothing
    coverage = (alphas.float() * mask).sum(dim=1)  # (B, L)
    return xent, ((1.0 - coverage) ** 2).mean(dim=1).sum()


def targets(data: TrainData, rows: torch.Tensor) -> int:
    """Predicted tokens of caption ``rows``: the words and <end>."""
    return int((data.lengths[rows] - 1).sum())


@dataclass
class StepLoss:
    """One training step's objective: ``loss(batch)`` -> (loss to back-propagate, this rank's part of ``stats``)."""

    loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    stats: tuple[str, ...]  # names of the per-step means it reports, averaged over the epoch


def cross_entropy_step(forward: nn.Module, data: TrainData, options: TrainOptions, ranks: Ranks) -> StepLoss:
    def loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, weight = ranks.share(batch)
        xent, attention = losses(forward, data, rows, options.label_smoothing)
        # Means over the whole batch; DDP averages the ranks' gradients, hence the world size.
        means = torch.stack([xent / targets(data, batch), attention / len(batch)]) * weight  # (2,)
        return ranks.world_size * (means[0] + options.attention_penalty * means[1]), means.detach()

    return StepLoss(loss, ("train_loss", "train_attention"))


def self_critical_step(
    forward: nn.Module, data: TrainData, options: TrainOptions, ranks: Ranks, reward: CiderD, vocab: Vocab
) -> StepLoss:
    device = data.captions.device

    def loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.unique(data.image_of[batch])  # (N,) the step's images; each rank samples for its share
        mine, weight = ranks.share(images)
        with autocast(device):
            total, rewards = scst.self_critical_loss(
                forward, data.inputs(mine), mine.tolist(), options.samples, reward, vocab
            )
        n = len(images) * options.samples  # sampled captions in the whole step
        mean_reward = torch.tensor([weight * rewards / n], device=device)
        return ranks.world_size * weight * total / n, mean_reward

    return StepLoss(loss, ("train_reward",))
