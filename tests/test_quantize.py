"""capcli export --quantize: an int8 bundle that validates, loads and captions like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capcli.bundle import DECODER, ENCODER, load_bundle
from capcli.cli import main

pytest.importorskip("onnx")
pytest.importorskip("torch")


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_quantized_bundle_from_a_bundle(tiny_bundle: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(out), "--quantize",
                                       "--check-images", str(photos)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "identical greedy captions" in result.output

    bundle = load_bundle(out)  # sha256s and signatures check out
    source = json.loads((tiny_bundle / "model.json").read_text())
    meta = bundle.meta
    assert meta["quantized"] is True and "quantized" not in source
    for name in (ENCODER, DECODER):
        assert meta["files"][name]["sha256"] != source["files"][name]["sha256"]
        assert meta["provenance"]["quantization"]["source"][name] == source["files"][name]["sha256"]
    # Everything but the files and the quantisation record is the source bundle's.
    same = {k: v for k, v in meta.items() if k not in ("files", "quantized", "provenance")}
    assert same == {k: v for k, v in source.items() if k not in ("files", "provenance")}
    comparison = meta["provenance"]["quantization"]["comparison"]
    assert comparison["inputs"] == "6 photo(s)" and 0 <= comparison["greedy_captions_identical"] <= 1
    # The products with weights are int8 now (only activation x activation products stay float).
    assert "MatMulInteger" in _ops(out / DECODER) and "Gemm" not in _ops(out / DECODER)

    records = tmp_path / "captions.jsonl"
    result = CliRunner().invoke(main, ["caption", str(photos), "--model", str(out), "-o", str(records),
                                       "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 6 and all(r["status"] == "ok" and r["caption"] for r in lines)


def test_quantized_export_from_a_checkpoint(tmp_path: Path) -> None:
    from tiny_bundle import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(out), "--quantize"])
    assert result.exit_code == 0, result.output
    meta = load_bundle(out).meta
    assert meta["quantized"] is True
    assert meta["provenance"]["parity"]["max_abs_diff"]  # the float export was checked against PyTorch first
    assert meta["provenance"]["checkpoint"]["file"] == "tiny.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8", "tiny.pt"]  # no float bundle left behind


def test_a_bundle_directory_needs_quantize(tiny_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--quantize" in result.output
    assert not (tmp_path / "x").exists()
