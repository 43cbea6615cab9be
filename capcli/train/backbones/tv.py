"""Any torchvision classification model as a backbone: ``torchvision:<name>``.

- Weights: the model's ``DEFAULT`` weights enum, fetched with torchvision's
  own ``weights.get_state_dict`` (torch hub: downloaded once into
  ``$TORCH_HOME/hub/checkpoints``).  The architecture is always built with
  ``weights=None`` plus the size arguments torchvision's builders take from
  those weights (ViT ``image_size``, MaxViT ``input_size``), so random init
  and pretrained runs build one architecture and checkpoints load either way.
- Preprocessing: the weights' ``transforms()`` (crop size, mean, std,
  interpolation); the photo is squashed to the crop size.
- Stages: CNNs are cut by :func:`stages.walk` at the pooling head (auxiliary
  Inception classifiers left out); Swin keeps its final norm and turns
  channels-last into a grid; ViT is patch embedding, one stage per encoder
  layer, then the final norm with the class token dropped.
- Inception/GoogLeNet: torchvision's pretrained weights expect the input
  their ``transform_input`` makes of ImageNet-normalised pixels; the stages
  skip that step, so the preprocessing folds it in (computed from the
  model's own ``_transform_input``, which gives [-1, 1]).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from capcli.bundle import Preprocess
from capcli.train.backbones import stages as st

PREFIX = "torchvision:"


def names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def check(arch: str) -> None:
    if arch not in names():
        raise ValueError(f"torchvision {_version()} has no classification model {arch!r}")


def default_weights(arch: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT


def weights_cached(arch: str) -> bool:
    import os

    url = default_weights(arch).url
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def create(arch: str, pretrained: bool) -> tuple[Preprocess, list[nn.Module]]:
    import torchvision

    weights = default_weights(arch)
    net = torchvision.models.get_model(arch, weights=None, **_builder_arguments(arch, weights, pretrained))
    if pretrained:
        net.load_state_dict(_fetch(arch, weights))
    net.eval()
    return _preprocess(net, weights), _stages(net)


def _builder_arguments(arch: str, weights: Any, pretrained: bool) -> dict[str, Any]:
    """What torchvision's builder sets itself when given ``weights`` (sizes change the architecture)."""
    import torchvision

    module = torchvision.models.get_model_builder(arch).__module__
    min_size = weights.meta["min_size"]
    if module.endswith(".vision_transformer"):
        return {"image_size": min_size[0]}
    if module.endswith(".maxvit"):
        return {"input_size": min_size}
    if module.endswith((".inception", ".googlenet")):
        return {"init_weights": not pretrained}  # no slow random init for weights about to be replaced
    return {}


def _fetch(arch: str, weights: Any) -> dict[str, torch.Tensor]:
    from capcli.train.backbones import WeightsUnavailable

    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - urllib, hash, disk errors: one clear message
        raise WeightsUnavailable(
            f"backbone torchvision:{arch}: pretrained weights {weights} are not in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints) and could not be downloaded from {weights.url} "
            f"({type(exc).__name__}: {exc}). Connect once to download them, copy the file there, "
            f"or train from scratch with --no-pretrained"
        ) from None


def _preprocess(net: nn.Module, weights: Any) -> Preprocess:
    t = weights.transforms()
    size = (t.crop_size[0], t.crop_size[0])
    mean, std = tuple(t.mean), tuple(t.std)
    if hasattr(net, "_transform_input"):
        mean, std = _fold_transform_input(net, mean, std)
    return Preprocess(size, mean, std, "squash", t.interpolation.value)  # type: ignore[arg-type]


def _fold_transform_input(net: nn.Module, mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    """Mean/std that give in one step what Normalize(mean, std) then ``net._transform_input`` give."""
    flag = net.transform_input
    net.transform_input = True
    try:
        cpu = torch.device("cpu")  # explicit: the network may be built under a meta-device context
        pixels = torch.tensor([0.0, 1.0], device=cpu).view(2, 1, 1, 1).expand(2, 3, 1, 1)  # (2, 3, 1, 1)
        normalised = (pixels - torch.tensor(mean, device=cpu).view(1, 3, 1, 1)) / torch.tensor(std, device=cpu).view(
            1, 3, 1, 1
        )
        y = net._transform_input(normalised).flatten(1)  # (2, 3): black and white after the transform
    finally:
        net.transform_input = flag
    scale = 1.0 / (y[1] - y[0])  # y = (pixel - m') / s' for pixel in {0, 1}
    return tuple(round(float(v), 6) for v in -y[0] * scale), tuple(round(float(v), 6) for v in scale)


def _stages(net: nn.Module) -> list[nn.Module]:
    from torchvision.models import SwinTransformer, VisionTransformer

    if isinstance(net, VisionTransformer):
        grid = net.image_size // net.patch_size
        layers = list(net.encoder.layers.children())
        return [_ViTEmbed(net), *layers, st.TokensToGrid(net.encoder.ln, 1, (grid, grid))]
    if isinstance(net, SwinTransformer):
        return [*net.features.children(), nn.Sequential(net.norm, st.ChannelsLast())]
    return st.walk(net, skip=lambda name, module: name.lower().startswith("aux"))


class _ViTEmbed(nn.Module):
    """Patch embedding, class token and position embedding (torchvision ``VisionTransformer``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv_proj, self.class_token = net.conv_proj, net.class_token
        self.pos_embedding, self.dropout = net.encoder.pos_embedding, net.encoder.dropout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        return self.dropout(x + self.pos_embedding)  # (B, 1 + N, D)


def _version() -> str:
    import torchvision

    return torchvision.__version__
