"""Bundle location and validation: every broken bundle fails before any work, naming file and problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from capcli.bundle import ENV_VAR, Preprocess, load_bundle, resolve_bundle_path
from capcli.errors import BundleError
from capcli.onnxinfo import read_signature


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))


def test_valid_bundle_loads_with_its_declared_fields(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    meta = json.loads((tiny_bundle / "model.json").read_text())
    assert bundle.path == tiny_bundle
    assert bundle.vocab.tokens == tuple(meta["vocab"]["tokens"])
    assert bundle.preprocess == Preprocess((64, 64), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash", "bilinear")
    assert bundle.grid == (8, 8)
    assert bundle.decoder == "gru" and bundle.state_names == ("h",)
    assert bundle.backbone == "tiny"
    assert bundle.max_len == 8
    assert bundle.provenance["licence"] == "test only"
    assert bundle.files["encoder.onnx"] == (tiny_bundle / "encoder.onnx").read_bytes()


def test_signature_reader_agrees_with_onnx(tiny_bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(tiny_bundle / name))
        sig = read_signature((tiny_bundle / name).read_bytes())

        def shapes(values):
            return {
                v.name: tuple(
                    d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim
                )
                for v in values
            }

        assert sig.inputs == shapes(model.graph.input)
        assert sig.outputs == shapes(model.graph.output)
        assert sig.opset == 17
    size = len(load_bundle(tiny_bundle).vocab)
    assert read_signature((tiny_bundle / "decoder.onnx").read_bytes()).outputs["logprobs"] == ("rows", size)


def test_signature_reader_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        read_signature(b"\xff" * 20)


def test_resolution_order(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tiny_bundle))
    assert resolve_bundle_path(None) == (tiny_bundle, f"${ENV_VAR}")
    assert resolve_bundle_path(tmp_path) == (tmp_path, "--model")
    assert load_bundle(None).path == tiny_bundle


def test_no_model_anywhere_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr("capcli.bundle.default_bundle_path", lambda: None)
    with pytest.raises(BundleError, match=r"no model: pass --model PATH or set CAPCLI_MODEL"):
        load_bundle(None)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"nowhere.*does not exist"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["model.json", "encoder.onnx", "decoder.onnx"])
def test_missing_file_is_named(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=rf"{name}: missing"):
        load_bundle(bundle_copy)


def test_checksum_mismatch_names_the_file(bundle_copy: Path) -> None:
    data = bytearray((bundle_copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the weights
    (bundle_copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder\.onnx: sha256 mismatch"):
        load_bundle(bundle_copy)


def test_bad_json(bundle_copy: Path) -> None:
    (bundle_copy / "model.json").write_text('{"format": "capcli-bundle",')
    with pytest.raises(BundleError, match=r"model\.json: not valid JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format="something-else"), r"not a capcli bundle"),
        (lambda m: m.update(format_version=5), r"unsupported format_version 5 \(newer than this capcli"),
        (lambda m: m.update(format_version=1), r"format_version 1 \(written by capcli 0\.1: .*--upgrade"),
        (lambda m: m.update(grid=[8]), r"field 'grid' must be \[gh, gw\]"),
        (lambda m: m["preprocess"].update(resize="crop"), r"field 'preprocess'"),
        (lambda m: m["decoder"].update(kind="transformer"), r"field 'decoder'"),
        (lambda m: m["vocab"]["tokens"].pop(0), r"vocabulary must start with the special tokens"),
        (lambda m: m.pop("max_len"), r"field 'max_len' must be a positive integer"),
    ],
)
def test_bad_fields(bundle_copy: Path, change, message: str) -> None:
    edit_meta(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_vocabulary_and_decoder_size_mismatch(bundle_copy: Path) -> None:
    v = len(load_bundle(bundle_copy).vocab)
    edit_meta(bundle_copy, lambda m: m["vocab"]["tokens"].append("extra"))
    with pytest.raises(
        BundleError, match=rf"decoder\.onnx: output 'logprobs' has size {v} .*vocabulary size \({v + 1}"
    ):
        load_bundle(bundle_copy)


def test_grid_mismatch(bundle_copy: Path) -> None:
    edit_meta(bundle_copy, lambda m: m.update(grid=[7, 7]))
    with pytest.raises(BundleError, match=r"\.onnx: .*'features' has size 64 .*grid 7x7 = 49 regions"):
        load_bundle(bundle_copy)


def test_image_size_mismatch(bundle_copy: Path) -> None:
    edit_meta(bundle_copy, lambda m: m["preprocess"].update(size=[224, 224]))
    with pytest.raises(BundleError, match=r"encoder\.onnx: input 'image' has size 64 on axis 2"):
        load_bundle(bundle_copy)


def test_decoder_kind_must_match_the_graphs(bundle_copy: Path) -> None:
    edit_meta(bundle_copy, lambda m: m["decoder"].update(kind="lstm"))
    with pytest.raises(BundleError, match=r"encoder\.onnx: outputs are .* expected .*'c'.* for a lstm decoder"):
        load_bundle(bundle_copy)
