"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from example_photos import copy_photos


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder ``tmp_path/photos`` holding the 5 example JPEGs shipped in ``examples/`` (sorted names)."""
    folder = tmp_path / "photos"
    copy_photos(folder)
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
