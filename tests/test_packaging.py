"""pyproject.toml: the onnxruntime package each platform gets from `pip install capcli`."""

from __future__ import annotations

import subprocess
import sys
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


def test_every_package_is_installed_and_export_lives_under_capcli() -> None:
    """The package list is explicit (export/ maps to capcli.export): a new subpackage must be added to it."""
    tool = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]
    root = PYPROJECT.parent
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "capcli").rglob("__init__.py")} | {
        "capcli.export"
    }
    assert on_disk <= set(tool["packages"])
    assert tool["package-dir"] == {"capcli.export": "export"}
    assert not any(p == "export" or p.startswith("export.") for p in tool["packages"])


def test_capcli_export_is_importable_and_no_top_level_export_is_installed(tmp_path: Path) -> None:
    # Outside the checkout, so that only what is installed can be imported.
    probe = (
        "import importlib.util, capcli.export;print(capcli.export.__file__); print(importlib.util.find_spec('export'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    where, export_spec = done.stdout.splitlines()
    assert Path(where) == PYPROJECT.parent / "export" / "__init__.py"
    assert export_spec == "None"
