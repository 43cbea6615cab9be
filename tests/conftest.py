"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared real data sits beside the repository; tests only read it.
FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder ``tmp_path/photos`` holding 6 real Flickr8k JPEGs (sorted names)."""
    images = FLICKR8K / "images"
    if not images.is_dir():
        pytest.skip(f"real photos not available at {images}")
    names = sorted(p.name for p in images.iterdir() if p.suffix == ".jpg")[:6]
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        shutil.copyfile(images / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread than on two busy shared cores."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GRU model (backbone "tiny", 64x64 input, vocabulary from real captions), exported once."""
    pytest.importorskip("torch", reason="building a bundle needs the train extra")
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-gru")
