"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from example_photos import copy_photos

from capcli import Model, captioning
from capcli.bundle import Preprocess


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


@dataclass
class FakeCaption:
    text: str
    score: float


class FakeCaptioner:
    """The one stand-in for a model in the tests: names each image by ``name(image)``.

    The default names an image by its mean brightness, so a record can be
    matched to its input; ``on_batch(n)`` lets a test act while batch n runs;
    ``batches`` records each batch's size.
    """

    device = "cpu"

    def __init__(
        self,
        on_batch: Callable[[int], None] | None = None,
        name: Callable[[np.ndarray], str] = lambda x: f"Brightness {x.mean():.3f}.",
        score: float = -1.0,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self.calls = 0
        self.batches: list[int] = []
        self.on_batch = on_batch
        self.name = name
        self.score = score
        self.shape = shape  # when set: every image must have this shape

    def caption(self, images: np.ndarray) -> list[FakeCaption]:  # (B, 3, H, W)
        assert images.dtype == np.float32 and images.ndim == 4
        if self.shape is not None:
            assert images.shape[1:] == self.shape
        self.calls += 1
        self.batches.append(len(images))
        if self.on_batch:
            self.on_batch(self.calls)
        return [FakeCaption(self.name(x), self.score) for x in images]


# The fake captioner behind ``capcli caption`` in the CLI tests (``capcli.captioning.load_model`` replaced).
PRE = Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def fake_captioner(on_batch: Callable[[int], None] | None = None) -> FakeCaptioner:
    """Captions an image by its mean brightness; ``on_batch`` lets a test act mid-run."""
    return FakeCaptioner(on_batch=on_batch, shape=(3, 8, 8))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCaptioner:
    captioner = fake_captioner()
    monkeypatch.setattr(captioning, "load_model", lambda settings: Model(captioner, PRE))
    return captioner
