"""Any timm model as a backbone: ``timm:<name>`` (optional extra: ``pip install 'capcli[timm]'``).

- Weights: ``timm.create_model(name, pretrained=True)``, timm's own loader
  (Hugging Face Hub, cached in ``$HF_HOME/hub``); a pretrained tag may be
  part of the name (``timm:convnext_tiny.fb_in22k``).
- Preprocessing: ``timm.data.resolve_data_config`` (the model's
  ``pretrained_cfg``: input size, mean, std, interpolation); the photo is
  squashed to the input size.
- Region grid: what ``forward_features`` returns, as ``(B, C, gh, gw)``:
  CNN feature maps as they are (channels-last ones such as Swin
  transposed), ViT-style token sequences with the class/register/distillation
  tokens (``num_prefix_tokens``) dropped and the patch tokens laid out on the
  patch grid.
- Stages, tried in order, each checked numerically against
  ``forward_features`` on a random image (on the meta device: by shape):
  ViT-style (patch and position embedding, one stage per block, final norm),
  then the network's children up to its head (:func:`stages.walk`).  A model
  for which neither reproduces ``forward_features`` is one stage (the whole
  trunk): it can be frozen or fine-tuned as a whole only.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from capcli.bundle import INTERPOLATIONS, Preprocess
from capcli.train.backbones import stages as st

PREFIX = "timm:"
# What a ViT's forward_features needs before its blocks; every other child is left out of the embedding stage.
_EMBEDDING_CHILDREN = frozenset({"patch_embed", "pos_drop", "patch_drop", "norm_pre"})


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def check(arch: str) -> None:
    if not installed():
        raise ValueError("timm backbones need the timm extra: pip install 'capcli[timm]' (or pip install timm)")
    import timm

    if not timm.is_model(arch):
        raise ValueError(f"timm {timm.__version__} has no model {arch!r} (see timm.list_models())")


def weights_cached(arch: str) -> bool:
    """Whether the pretrained weights of ``arch`` are in the local Hugging Face (or torch hub) cache."""
    import os

    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        repo = os.path.join(constants.HF_HUB_CACHE, "models--" + cfg.hf_hub_id.replace("/", "--"), "snapshots")
        return os.path.isdir(repo) and bool(os.listdir(repo))
    return bool(cfg.url) and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url)))


def create(arch: str, pretrained: bool) -> tuple[Preprocess, list[nn.Module]]:
    import timm

    if pretrained:
        net = _pretrained(arch)
    else:
        net = timm.create_model(arch, pretrained=False)
    net.eval()
    pre = _preprocess(net)
    return pre, _stages(net, pre.size)


def _pretrained(arch: str) -> nn.Module:
    import timm

    from capcli.train.backbones import WeightsUnavailable

    try:
        return timm.create_model(arch, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - network, hub and cache errors of many kinds: one clear message
        raise WeightsUnavailable(
            f"backbone timm:{arch}: pretrained weights are not in the local cache and could not be downloaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Connect once to download "
            f"them (timm caches them in the Hugging Face cache, $HF_HOME/hub), or train from scratch with "
            f"--no-pretrained"
        ) from None


def _preprocess(net: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg: dict[str, Any] = resolve_data_config({}, model=net)
    _, h, w = cfg["input_size"]
    interpolation = cfg["interpolation"]
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"timm model {type(net).__name__}: interpolation {interpolation!r} is not supported")
    mean = tuple(float(v) for v in cfg["mean"])
    std = tuple(float(v) for v in cfg["std"])
    return Preprocess((h, w), mean, std, "squash", interpolation)  # type: ignore[arg-type]


def _stages(net: nn.Module, size: tuple[int, int]) -> list[nn.Module]:
    meta = st.on_meta(net)
    to_grid = _to_grid(net)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return to_grid(net.forward_features(x))

    for candidate in (_vit_stages, _walk_stages):
        stages = candidate(net)
        if stages and st.same_output(stages, reference, size, meta):
            return stages
    net.reset_classifier(0)  # the trunk keeps only what forward_features uses, more or less
    return [_Trunk(net, to_grid)]


def _to_grid(net: nn.Module) -> nn.Module:
    """What turns ``forward_features`` output into ``(B, C, gh, gw)`` for this network."""
    if getattr(net, "output_fmt", "NCHW") == "NHWC":
        return st.ChannelsLast()
    prefix = getattr(net, "num_prefix_tokens", None)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if prefix is not None and grid is not None:
        return st.TokensToGrid(nn.Identity(), prefix, tuple(grid))
    return nn.Identity()


def _vit_stages(net: nn.Module) -> list[nn.Module]:
    names = dict(net.named_children())
    if not {"patch_embed", "blocks", "norm"} <= names.keys() or not hasattr(net, "num_prefix_tokens"):
        return []
    grid = getattr(net.patch_embed, "grid_size", None)
    if grid is None:
        return []
    tail = st.TokensToGrid(net.norm, net.num_prefix_tokens, tuple(grid))
    return [_ViTEmbedding(net), *net.blocks.children(), tail]


def _walk_stages(net: nn.Module) -> list[nn.Module]:
    stages = st.walk(net)
    if stages and getattr(net, "output_fmt", "NCHW") == "NHWC":
        stages[-1] = nn.Sequential(stages[-1], st.ChannelsLast())
    return stages


class _ViTEmbedding(nn.Module):
    """A ViT's ``forward_features`` up to its blocks (patch embedding, prefix tokens, position embedding).

    A shallow copy of the network whose other children are ``Identity``: timm's
    own ``_pos_embed`` runs, and no block or head weight belongs to this stage.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        embedding = copy.copy(net)
        embedding._modules = {k: m if k in _EMBEDDING_CHILDREN else nn.Identity() for k, m in net._modules.items()}
        embedding._parameters = dict(net._parameters)
        embedding._buffers = dict(net._buffers)
        self.net = embedding

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(images)  # (B, P + N, D)


class _Trunk(nn.Module):
    """The whole ``forward_features`` as one stage."""

    def __init__(self, net: nn.Module, to_grid: nn.Module) -> None:
        super().__init__()
        self.net, self.to_grid = net, to_grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_grid(self.net.forward_features(images))  # (B, C, gh, gw)
