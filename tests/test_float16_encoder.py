"""``--precision float16``: the encoder made to compute in float16 (capcli.float16), run on the CPU provider.

On CUDA the same graph runs on the GPU; the logic around it is the same, so it is tested here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from example_photos import example_paths

from capcli.bundle import ENCODER, load_bundle
from capcli.cli import main
from capcli.errors import FatalError
from capcli.float16 import float16_encoder
from capcli.images import load
from capcli.runtime import Captioner

onnx = pytest.importorskip("onnx")
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def images(bundle) -> np.ndarray:
    return np.stack([load(str(f), bundle.preprocess).array for f in example_paths()[:4]])  # (4, 3, H, W)


def test_the_graph_computes_in_float16_between_float32_edges(bundle) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(float16_encoder(bundle.files[ENCODER])))
    graph = model.graph
    assert [t.type.tensor_type.elem_type for t in graph.input] == [FLOAT]
    assert {t.type.tensor_type.elem_type for t in graph.output} == {FLOAT}
    assert [t.name for t in graph.output] == [t.name for t in onnx.load_from_string(bundle.files[ENCODER]).graph.output]
    weights = {t.name: t.data_type for t in graph.initializer}
    convolutions = [n for n in graph.node if n.op_type == "Conv"]
    assert convolutions and all(weights[n.input[1]] == FLOAT16 for n in convolutions)
    inside = [v.type.tensor_type.elem_type for v in graph.value_info]
    assert inside.count(FLOAT16) > 4 * inside.count(FLOAT)  # float32 only at the edges and in blocked ops


def test_float16_outputs_are_the_float_ones_within_float16_rounding(bundle, images: np.ndarray) -> None:
    exact = Captioner(bundle, device="cpu", precision="float").encode(images)
    half = Captioner(bundle, device="cpu", precision="float16")
    assert half.encoder_precision == "float16" and half.precision == "float"  # the decoder stays float
    got = half.encode(images)
    assert got.keys() == exact.keys()
    for name, value in exact.items():
        assert got[name].dtype == np.float32 and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=4e-3 * max(1.0, float(np.abs(value).max())), err_msg=name)
    assert any(not np.array_equal(got[name], exact[name]) for name in exact)  # float16 arithmetic really ran


def test_float16_captions_and_scores_stay_close(bundle, images: np.ndarray) -> None:
    exact = Captioner(bundle, device="cpu", beam=3, precision="float").caption(images)
    half = Captioner(bundle, device="cpu", beam=3, precision="float16").caption(images)
    same = [(a, b) for a, b in zip(exact, half) if a.tokens == b.tokens]
    assert len(same) >= len(images) - 1  # a near-tie may flip one word of a random model's caption
    for a, b in same:
        assert b.score == pytest.approx(a.score, abs=2e-2)


def test_caption_command_takes_float16(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    photos = [str(p) for p in example_paths()[:3]]
    args = [
        "caption",
        *photos,
        "--model",
        str(tiny_bundle),
        "--device",
        "cpu",
        "--precision",
        "float16",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 3 and all(r["caption"].endswith(".") for r in records)


def test_without_onnx_the_error_says_what_to_install(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(FatalError, match="float16 needs the onnx package.*pip install onnx"):
        Captioner(bundle, device="cpu", precision="float16")
