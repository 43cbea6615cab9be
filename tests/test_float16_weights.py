"""capcli export --float16-weights: float graphs half the size, casting back to float32, same captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from capcli.bundle import DECODER, ENCODER, INT8_DECODER, load_bundle
from capcli.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")


def test_checkpoint_to_int8_and_float16_bundle(tmp_path: Path, photos: Path) -> None:
    from tiny_bundle import make_tiny_checkpoint

    from capcli.decode import Decoding
    from capcli.runtime import Captioner

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    args = ["export", str(checkpoint), "--check-images", str(photos)]
    assert CliRunner().invoke(main, [*args, "-o", str(tmp_path / "f32"), "--quantize"]).exit_code == 0
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "f16"), "--quantize", "--float16-weights"])
    assert result.exit_code == 0, result.output
    assert "16-bit vs 32-bit weights on 5 photo(s)" in result.output
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage left behind

    f32, f16 = load_bundle(tmp_path / "f32"), load_bundle(f16_dir := tmp_path / "f16")  # sha256s check out
    assert f16.files[INT8_DECODER] == f32.files[INT8_DECODER]  # quantised from the 32-bit decoder, then untouched
    for name in (ENCODER, DECODER):
        graph = onnx.load(str(f16_dir / name)).graph
        halves = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        assert halves and all(np.prod(t.dims) >= 1024 for t in halves)
        assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 1024]
        assert len(f16.files[name]) < 0.8 * len(f32.files[name])  # the tiny graphs hold many small tensors
    weights = f16.meta["provenance"]["weights"]
    assert weights["storage"] == "float16" and weights["comparison"]["inputs"] == "5 photo(s)"
    assert "--float16-weights" in weights["command"]
    assert f16.meta["provenance"]["parity"]["max_abs_diff"]  # the 32-bit export was checked against PyTorch

    # Same captions and nearly the same numbers, float and int8 decoders alike. With repeats allowed: a tiny
    # random model's words are near-ties, and the rule against repeats brings more of them into play (the
    # graphs below are checked under the rule, and export compares a real model's 16-bit weights on photos).
    pixels = np.random.default_rng(0).standard_normal((4, 3, *f32.preprocess.size)).astype(np.float32)
    repeats = Decoding(no_repeated_words=False)
    for precision in ("float", "int8"):
        a = Captioner(f32, device="cpu", precision=precision, decoding=repeats).caption(pixels)
        b = Captioner(f16, device="cpu", precision=precision, decoding=repeats).caption(pixels)
        assert [c.text for c in a] == [c.text for c in b]
        assert np.allclose([c.score for c in a], [c.score for c in b], atol=1e-2)
        # The search graphs read the new decoder's weights: the same captions and scores as the numpy loop.
        for decoding in (repeats, Decoding()):
            graph = Captioner(f16, device="cpu", precision=precision, decoding=decoding, search="graph")
            by_numpy = Captioner(f16, device="cpu", precision=precision, decoding=decoding, search="numpy")
            assert [(c.text, c.score) for c in graph.caption(pixels)] == [
                (c.text, c.score) for c in by_numpy.caption(pixels)
            ]


def test_a_bundle_can_be_stored_in_float16_alone(tiny_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(tmp_path / "x"), "--float16-weights"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "x")
    assert not bundle.has_int8_decoder and bundle.meta["provenance"]["weights"]["storage"] == "float16"
