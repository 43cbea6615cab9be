"""pyproject.toml: the onnxruntime package each platform gets from `pip install capcli`."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# (sys_platform, platform_machine) -> the one onnxruntime package pip must install there.
PLATFORMS = {
    ("linux", "x86_64"): "onnxruntime-gpu",
    ("win32", "AMD64"): "onnxruntime-gpu",
    ("linux", "aarch64"): "onnxruntime",
    ("darwin", "arm64"): "onnxruntime",
    ("darwin", "x86_64"): "onnxruntime",
    ("win32", "ARM64"): "onnxruntime",
}


def _onnxruntime_requirements() -> list[Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if r.name.startswith("onnxruntime")]


@pytest.mark.parametrize(("platform", "machine"), sorted(PLATFORMS))
def test_each_platform_gets_exactly_one_onnxruntime(platform: str, machine: str) -> None:
    env = {"sys_platform": platform, "platform_machine": machine}
    chosen = [r.name for r in _onnxruntime_requirements() if r.marker is None or r.marker.evaluate(env)]
    assert chosen == [PLATFORMS[platform, machine]]


def test_both_packages_have_the_same_minimum_version() -> None:
    assert {str(r.specifier) for r in _onnxruntime_requirements()} == {">=1.20"}
