"""Turning a library's classification network into a sequence of stages that ends in a region grid.

Shared by the torchvision and timm families:

- :func:`walk` lists a network's children in definition order up to its
  classification head, opening the usual block containers, so the stages can
  be split for fine-tuning;
- :class:`TokensToGrid` turns a transformer's token sequence into the
  ``(B, C, gh, gw)`` grid every backbone ends in (prefix tokens dropped);
- :func:`same_output` checks a candidate stage list numerically against the
  library's own feature function before it is trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

# Children that belong to the classification head (everything from the first of these on is dropped).
HEAD_NAMES = frozenset(
    {
        "avgpool",
        "global_pool",
        "fc",
        "classifier",
        "head",
        "heads",
        "head_drop",
        "fc_norm",
        "pre_logits",
        "head_dist",
        "attn_pool",
        "dropout",
    }
)
HEAD_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Dropout, nn.Flatten)
# Containers whose children run one after another (opened so each block is its own stage).
CONTAINER_NAMES = frozenset({"features", "layers", "blocks", "stages", "trunk_output"})
POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def walk(net: nn.Module, skip: Callable[[str, nn.Module], bool] = lambda name, module: False) -> list[nn.Module]:
    """Stages of ``net``: its children up to the head, containers opened, runs of plain layers grouped.

    Consecutive childless layers (conv, norm, activation, pooling) form one
    stage, closed after a pooling layer, so a ResNet's ``conv1, bn1, relu,
    maxpool`` is one stem stage.  ``skip(name, module)`` leaves a child out
    (auxiliary classifiers).  Only valid when the network's forward runs its
    children in this order: the families check that (see :func:`same_output`).
    """
    modules: list[nn.Module] = []
    for name, child in net.named_children():
        if name in HEAD_NAMES or isinstance(child, HEAD_TYPES):
            break
        if skip(name, child) or isinstance(child, nn.Identity):  # Identity: a layer this variant does without
            continue
        if name in CONTAINER_NAMES and isinstance(child, (nn.Sequential, nn.ModuleList)):
            modules += list(child.children())
        else:
            modules.append(child)
    return group_leaves(modules)


def group_leaves(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Runs of childless modules become one ``nn.Sequential`` (closed after a pooling layer)."""
    stages: list[nn.Module] = []
    run: list[nn.Module] = []

    def close() -> None:
        if run:
            stages.append(run[0] if len(run) == 1 else nn.Sequential(*run))
            run.clear()

    for module in modules:
        if next(module.children(), None) is None:
            run.append(module)
            if isinstance(module, POOLS):
                close()
        else:
            close()
            stages.append(module)
    close()
    return stages


class TokensToGrid(nn.Module):
    """Transformer tokens ``(B, P + gh*gw, C)`` -> grid ``(B, C, gh, gw)``: final norm, prefix tokens dropped."""

    def __init__(self, norm: nn.Module, prefix_tokens: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.norm, self.prefix_tokens, self.grid = norm, prefix_tokens, grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens)[:, self.prefix_tokens :]  # (B, gh*gw, C)
        return x.transpose(1, 2).unflatten(2, self.grid)  # (B, C, gh, gw)


class ChannelsLast(nn.Module):
    """``(B, H, W, C)`` -> ``(B, C, H, W)`` (Swin-style networks keep channels last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def run(stages: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for stage in stages:
        x = stage(x)
    return x


def on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


@torch.no_grad()
def same_output(
    candidate: list[nn.Module], reference: Callable[[torch.Tensor], torch.Tensor], size: tuple[int, int], meta: bool
) -> bool:
    """Whether ``candidate`` computes ``reference`` (eval mode, one seeded random image).

    Compared on a quarter-size image first (16 times cheaper) when the network
    accepts one, else at ``size``; on the meta device only the shapes can be
    compared.  Any exception from ``candidate`` (a block that needs extra
    arguments, say) counts as "not the same".
    """
    h, w = size
    probes = [size] if meta else [(max(h // 4, 96), max(w // 4, 96)), size]
    for probe in probes:
        if meta:
            x = torch.zeros(1, 3, *probe, device="meta")
        else:
            x = torch.randn(1, 3, *probe, generator=torch.Generator().manual_seed(0), device="cpu")  # (1, 3, h, w)
        try:
            theirs = reference(x)
        except Exception:  # noqa: BLE001 - too small for this network (fixed position embeddings, ...)
            continue
        try:
            ours = run(candidate, x)
        except Exception:  # noqa: BLE001 - any failure means the stage list is not usable
            return False
        return ours.shape == theirs.shape and (meta or bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)))
    return False
