"""The encoder taking uint8 pixels (capcli.pixel_input), run on the CPU provider.

Under CUDA capcli uses it so that a batch crosses to the GPU as pixels, a quarter of the float input;
the graph and the code around it are the same on the CPU, so they are tested here: the encoder must see
the bits the reader's normalisation gives, so every caption and score stays the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from example_photos import example_paths
from PIL import Image

from capcli import runtime
from capcli.api import Model
from capcli.bundle import load_bundle
from capcli.errors import FatalError
from capcli.images import load, normalise, open_rgb, to_array
from capcli.runtime import Captioner

pytest.importorskip("onnx")
SHIPPED = Path(__file__).resolve().parents[1] / "capcli" / "models" / "default"


@pytest.fixture(scope="module")
def shipped():
    return load_bundle(SHIPPED)


def _both(bundle, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The photos as the reader gives them: (B, 3, H, W) float32 normalised, and (B, H, W, 3) uint8 pixels."""
    floats = np.stack([load(str(p), bundle.preprocess).array for p in paths])
    pixels = np.stack([load(str(p), bundle.preprocess, pixels=True).array for p in paths])
    return floats, pixels


def test_pixels_are_the_resized_photo_and_normalise_gives_the_readers_floats(shipped) -> None:
    pre = shipped.preprocess
    image, _ = open_rgb(str(example_paths()[0]), draft_to=max(pre.size))  # as load() opens it
    pixels = to_array(image, pre, pixels=True)
    assert pixels.dtype == np.uint8 and pixels.shape == (*pre.size, 3)
    assert np.array_equal(pixels, np.asarray(image.resize(pre.size[::-1], Image.Resampling.BILINEAR)))
    floats, batch = _both(shipped, example_paths())
    assert np.array_equal(batch[0], pixels)
    assert np.array_equal(normalise(pixels, pre), floats[0])
    assert np.array_equal(normalise(batch, pre), floats)  # (B, H, W, 3) -> (B, 3, H, W), bit for bit


@pytest.mark.parametrize("precision", ["float", "float16"])
def test_the_pixel_encoder_gives_the_same_bits_and_captions(shipped, precision: str) -> None:
    """The shipped model (a tagger, the grounded decoder): outputs bit for bit, then captions, scores and
    tags with beam 3, a batch and a lone image; also with the encoder in float16."""
    floats, pixels = _both(shipped, example_paths())
    plain = Captioner(shipped, device="cpu", beam=3, tags=3, lanes=1, precision=precision)
    pixel = Captioner(shipped, device="cpu", beam=3, tags=3, lanes=1, precision=precision, pixel_input=True)
    assert not plain.takes_pixels and pixel.takes_pixels
    for rows in (slice(None), slice(0, 1)):
        expected, got = plain.encode(floats[rows]), pixel.encode(pixels[rows])
        assert set(got) == set(expected)
        assert all(np.array_equal(got[name], expected[name]) for name in expected)
        want = [(c.tokens, c.score, c.tags) for c in plain.caption(floats[rows])]
        assert [(c.tokens, c.score, c.tags) for c in pixel.caption(pixels[rows])] == want


@pytest.mark.parametrize("beam", [1, 3])
def test_pixels_in_place_and_the_search_graph(shipped, beam: int) -> None:
    """The CUDA path in full, simulated on the CPU provider: pixels in, encoder outputs left where the search
    graph reads them, captions out, the same as the float input's numpy search."""
    floats, pixels = _both(shipped, example_paths()[:3])
    expected = Captioner(shipped, device="cpu", beam=beam, lanes=1, search="numpy").caption(floats)
    on_device = Captioner(shipped, device="cpu", beam=beam, lanes=1, search="graph", pixel_input=True)
    on_device._context_memory = ("cpu", 0)  # what CUDA sets to ("cuda", N)
    got = on_device.caption(pixels)
    assert [(c.tokens, c.score) for c in got] == [(c.tokens, c.score) for c in expected]


def test_inputs_each_captioner_takes(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    floats, pixels = _both(bundle, example_paths()[:2])
    plain, pixel = Captioner(bundle, device="cpu"), Captioner(bundle, device="cpu", pixel_input=True)
    # Pixels suit both (a float encoder gets them normalised); float input only the float encoder.
    want = [(c.tokens, c.score) for c in plain.caption(floats)]
    assert [(c.tokens, c.score) for c in plain.caption(pixels)] == want
    assert [(c.tokens, c.score) for c in pixel.caption(pixels)] == want
    with pytest.raises(ValueError, match=r"images must be \(B, 64, 64, 3\) uint8 pixels; got \(2, 3, 64, 64\)"):
        pixel.caption(floats)
    with pytest.raises(ValueError, match="uint8 pixels, or"):
        plain.caption(pixels.astype(np.float32))


def test_the_reader_gives_a_pixel_captioner_pixels(tiny_bundle: Path, photos: Path) -> None:
    """``capcli.load``'s pipeline reads each input (files, a PIL image, an array) into what the captioner
    takes: the same records."""
    bundle = load_bundle(tiny_bundle)
    files = sorted(str(p) for p in photos.iterdir())
    picture = Image.open(files[0]).convert("RGB")
    paths = [*files, picture, np.asarray(picture)]
    seen = []
    pixel = Captioner(bundle, device="cpu", pixel_input=True)
    caption = pixel.caption
    pixel.caption = lambda images, **kw: seen.append(images.dtype) or caption(images, **kw)  # type: ignore[method-assign]
    records = list(Model(pixel, bundle.preprocess, bundle=bundle).caption(paths))
    expected = list(Model(Captioner(bundle, device="cpu"), bundle.preprocess, bundle=bundle).caption(paths))
    assert seen and set(seen) == {np.dtype(np.uint8)}
    assert [(r["caption"], r["score"]) for r in records] == [(r["caption"], r["score"]) for r in expected]


def test_without_onnx_pixel_input_is_refused_and_the_cpu_never_loads_onnx(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(tiny_bundle)
    monkeypatch.setattr(runtime, "pixel_input_encoder", lambda data, pre: None)  # what it returns without onnx
    with pytest.raises(FatalError, match="onnx package"):
        Captioner(bundle, device="cpu", pixel_input=True)
    code = (
        "import sys, numpy as np\n"
        "from capcli.bundle import load_bundle\n"
        "from capcli.runtime import Captioner\n"
        f"c = Captioner(load_bundle({str(tiny_bundle)!r}), device='auto')\n"
        "c.caption(np.zeros((1, 64, 64, 3), np.uint8))\n"
        "assert (c.device == 'cpu') == ('onnx' not in sys.modules) and c.takes_pixels == (c.device != 'cpu')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # importing onnx costs 0.6 s a run


def test_the_cuda_path_end_to_end_gives_the_cpu_records(shipped, photos: Path) -> None:
    """capcli's pipeline as it runs under CUDA (two lanes, pixels read for the encoder, its outputs left in
    place for the search graph, beam 3, tags), simulated on the CPU provider: the CPU default's records."""
    paths = sorted(str(p) for p in photos.iterdir())
    on_device = Captioner(shipped, device="cpu", beam=3, tags=3, search="graph", pixel_input=True, precision="float")
    on_device._context_memory = ("cpu", 0)  # what CUDA sets to ("cuda", N)
    default = Captioner(shipped, device="cpu", beam=3, tags=3, precision="float")  # CUDA's decoder is float
    got = list(Model(on_device, shipped.preprocess, bundle=shipped, batch_size=2).caption(paths))
    want = list(Model(default, shipped.preprocess, bundle=shipped, batch_size=2).caption(paths))
    assert on_device.lanes == 2 and len(got) == len(paths) and all(r["status"] == "ok" for r in got)
    assert got == want
