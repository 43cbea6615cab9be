"""capcli export --quantize: a bundle with an int8 decoder that validates, loads, captions, and is used on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capcli.bundle import DECODER, ENCODER, INT8_DECODER, load_bundle
from capcli.cli import main

pytest.importorskip("onnx")
pytest.importorskip("torch")


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_quantize_adds_an_int8_decoder_that_the_cpu_prefers(tiny_bundle: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = CliRunner().invoke(
        main, ["export", str(tiny_bundle), "-o", str(out), "--quantize", "--check-images", str(photos)]
    )
    assert result.exit_code == 0, result.output
    assert "identical greedy captions" in result.output

    bundle = load_bundle(out)  # sha256s and signatures check out, the int8 decoder's too
    assert bundle.has_int8_decoder and not load_bundle(tiny_bundle).has_int8_decoder
    source = json.loads((tiny_bundle / "model.json").read_text())
    meta = bundle.meta
    # The float graphs are the source's, byte for byte; the int8 decoder is listed beside them.
    for name in (ENCODER, DECODER):
        assert (out / name).read_bytes() == (tiny_bundle / name).read_bytes()
        assert meta["files"][name] == source["files"][name]
    quantization = meta["provenance"]["quantization"]
    assert quantization["file"] == INT8_DECODER
    assert quantization["source"][DECODER] == source["files"][DECODER]["sha256"]
    same = {k: v for k, v in meta.items() if k not in ("files", "provenance", "search")}
    assert same == {k: v for k, v in source.items() if k not in ("files", "provenance", "search")}
    assert meta["search"]["search.int8.onnx"]["decoder_sha256"] == meta["files"][INT8_DECODER]["sha256"]
    comparison = quantization["comparison"]
    assert comparison["inputs"] == "5 photo(s)" and 0 <= comparison["greedy_captions_identical"] <= 1
    # The products with weights are int8 (only activation x activation products stay float).
    assert "MatMulInteger" in _ops(out / INT8_DECODER) and "Gemm" not in _ops(out / INT8_DECODER)
    assert "MatMulInteger" not in _ops(out / DECODER)
    # Activations are quantised row by row: no scale shared by the whole batch.
    assert quantization["activation_scale"] == "per-row"
    assert "DynamicQuantizeLinear" not in _ops(out / INT8_DECODER) and "QuantizeLinear" in _ops(out / INT8_DECODER)

    # The CPU uses it by default; --precision float and int8 choose.
    from capcli.runtime import Captioner

    assert Captioner(bundle, device="cpu").precision == "int8"
    assert Captioner(bundle, device="cpu", precision="float").precision == "float"
    _rows_do_not_depend_on_their_batch(bundle)
    for precision in ("auto", "float", "int8"):
        records = tmp_path / f"{precision}.jsonl"
        result = CliRunner().invoke(
            main,
            [
                "caption",
                str(photos),
                "--model",
                str(out),
                "-o",
                str(records),
                "--device",
                "cpu",
                "--precision",
                precision,
            ],
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in records.read_text().splitlines()]
        assert len(lines) == 5 and all(r["status"] == "ok" and r["caption"] for r in lines)


def _rows_do_not_depend_on_their_batch(bundle) -> None:
    """One int8 decoder step: each row's numbers are the same, bit for bit, alone and among other rows."""
    import numpy as np

    from capcli.runtime import Captioner

    captioner = Captioner(bundle, device="cpu", precision="int8")
    rng = np.random.default_rng(0)
    images = (
        rng.standard_normal((6, 3, 64, 64)).astype(np.float32) * np.array([0.2, 1, 5, 0.5, 3, 1])[:, None, None, None]
    )
    encoded = captioner.encode(images)  # rows of very different ranges: one shared scale would show
    tokens = rng.integers(4, len(bundle.vocab), 6)
    together, _, _ = captioner.step(tokens, {"h": encoded["h"]}, captioner.bind_context(encoded))
    for i in range(6):
        alone, _, _ = captioner.step(
            tokens[i : i + 1], {"h": encoded["h"][i : i + 1]}, captioner.bind_context(encoded, np.array([i]))
        )
        assert np.array_equal(alone[0], together[i]), i


def test_an_int8_decoder_with_one_scale_per_batch_is_not_the_default(tiny_bundle: Path, tmp_path: Path) -> None:
    """Bundles quantised before per-row scales: auto takes the float decoder (results independent of the
    batch); --precision int8 still takes theirs."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from capcli.bundle import sha256_bytes
    from capcli.runtime import Captioner

    old = Path(shutil.copytree(tiny_bundle, tmp_path / "old"))
    quantize_dynamic(
        old / DECODER, old / INT8_DECODER, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8
    )
    meta = json.loads((old / "model.json").read_text())
    meta["files"][INT8_DECODER] = {"sha256": sha256_bytes((old / INT8_DECODER).read_bytes())}
    meta["provenance"]["quantization"] = {"method": "dynamic", "file": INT8_DECODER}
    (old / "model.json").write_text(json.dumps(meta))
    bundle = load_bundle(old)
    assert Captioner(bundle, device="cpu").precision == "float"
    assert Captioner(bundle, device="cpu", precision="int8").precision == "int8"


def test_int8_needs_an_int8_decoder(tiny_bundle: Path, photos: Path) -> None:
    result = CliRunner().invoke(
        main, ["caption", str(photos), "--model", str(tiny_bundle), "--precision", "int8", "--device", "cpu"]
    )
    assert result.exit_code == 1
    assert "no decoder.int8.onnx" in result.output and "--quantize" in result.output


def test_a_listed_int8_decoder_is_checked(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from capcli.errors import BundleError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    meta = json.loads((broken / "model.json").read_text())
    meta["files"][INT8_DECODER] = {"sha256": "0" * 64}
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="decoder.int8.onnx: missing"):
        load_bundle(broken)
    shutil.copy(broken / DECODER, broken / INT8_DECODER)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(broken)


def test_quantized_export_from_a_checkpoint(tmp_path: Path) -> None:
    from tiny_bundle import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(out), "--quantize"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    meta = bundle.meta
    assert bundle.has_int8_decoder
    assert meta["provenance"]["parity"]["max_abs_diff"]  # the float export was checked against PyTorch first
    assert meta["provenance"]["checkpoint"]["file"] == "tiny.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8", "tiny.pt"]  # no float bundle left behind
    # The parity check compares PyTorch with the float graphs, also in a bundle whose CPU default is int8.
    from capcli.export import check_parity, load_checkpoint

    assert check_parity(load_checkpoint(checkpoint).model, out).ok


def test_a_bundle_directory_needs_quantize(tiny_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--quantize" in result.output
    assert not (tmp_path / "x").exists()
