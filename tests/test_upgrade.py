"""capcli export --upgrade: a capcli 0.1 bundle (format 1) becomes a format-2 one that captions the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capcli.bundle import DECODER, ENCODER, FORMAT_VERSION, load_bundle
from capcli.cli import main
from capcli.errors import BundleError

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


class _EncoderV1(torch.nn.Module):
    """capcli 0.1's encoder.onnx: keys (B, L, A)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image):
        features = self.model.features(self.model.backbone_grid(image))  # (B, L, D)
        keys = self.model.decoder.keys(features)  # (B, L, A)
        return features, keys, torch.tanh(self.model.decoder.init_state[0](features.mean(dim=1)))


class _StepV1(torch.nn.Module):
    """capcli 0.1's decoder.onnx (GRU): every row brings its own copy of the context, keys (N, L, A)."""

    def __init__(self, decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, token, h, features, keys):
        d = self.decoder
        e = d.attention.score(torch.tanh(keys + d.attention.query(h).unsqueeze(1))).squeeze(2)  # (N, L)
        alpha = torch.softmax(e, dim=1)
        context = torch.sigmoid(d.gate(h)) * torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (N, D)
        new = d.cell(torch.cat([d.embed(token), context], dim=1), h)
        return torch.log_softmax(d.out(new), dim=1), new, alpha


def _format1_bundle(folder: Path) -> tuple[Path, object]:
    """The tiny model exported as capcli 0.1 did (same graphs, names and model.json, format_version 1)."""
    from capcli.export.onnx_export import _quiet_exporter, bundle_meta, write_meta
    from tiny_bundle import make_tiny_model, tiny_vocab

    from capcli.bundle import sha256_bytes

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, "gru")
    folder.mkdir()
    image = torch.randn(2, 3, *model.backbone.spec.image_size)
    with torch.no_grad():
        features, keys, h = _EncoderV1(model)(image)
    rows = {0: "batch"}
    names = ["token", "h", "features", "keys", "logprobs", "h_out", "alpha"]
    with _quiet_exporter():
        torch.onnx.export(
            _EncoderV1(model).eval(),
            (image,),
            str(folder / ENCODER),
            input_names=["image"],
            output_names=["features", "keys", "h"],
            dynamic_axes={n: rows for n in ("image", "features", "keys", "h")},
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            _StepV1(model.decoder).eval(),
            (torch.tensor([1, 4]), h, features, keys),
            str(folder / DECODER),
            input_names=names[:4],
            output_names=names[4:],
            dynamic_axes={n: rows for n in names},
            opset_version=17,
            dynamo=False,
        )
    meta = bundle_meta(model, vocab, folder, 17, {"dataset": "flickr8k"})
    meta["format_version"] = 1
    meta["files"] = {name: {"sha256": sha256_bytes((folder / name).read_bytes())} for name in (ENCODER, DECODER)}
    write_meta(folder, meta)
    return folder, model


def test_upgrade_keeps_the_captions_and_records_how(tmp_path: Path, photos: Path) -> None:
    old, model = _format1_bundle(tmp_path / "old")
    with pytest.raises(BundleError, match=r"format_version 1 \(written by capcli 0\.1: .*--upgrade"):
        load_bundle(old)
    new = tmp_path / "new"
    result = CliRunner().invoke(main, ["export", str(old), "-o", str(new), "--upgrade", "--check-images", str(photos)])
    assert result.exit_code == 0, result.output
    assert "upgraded from format 1" in result.output

    bundle = load_bundle(new)  # format 2: validates
    meta, before = bundle.meta, json.loads((old / "model.json").read_text())
    assert (
        meta["format_version"] == FORMAT_VERSION and meta["vocab"] == before["vocab"] and meta["grid"] == before["grid"]
    )
    upgrade = meta["provenance"]["upgrade"]
    assert upgrade["from_format"] == 1 and upgrade["source"][DECODER] == before["files"][DECODER]["sha256"]
    assert upgrade["parity"]["inputs"] == "3 photo(s)" and max(upgrade["parity"]["max_abs_diff"].values()) < 1e-4

    # The same captions as a fresh export of the same model (which is format 2 from the start).
    from capcli.export import export_bundle

    fresh = export_bundle(model, bundle.vocab, tmp_path / "fresh")
    captions = {}
    for name, folder in (("upgraded", new), ("fresh", fresh)):
        out = tmp_path / f"{name}.jsonl"
        result = CliRunner().invoke(
            main, ["caption", str(photos), "--model", str(folder), "-o", str(out), "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        captions[name] = [json.loads(line)["caption"] for line in out.read_text().splitlines()]
    assert captions["upgraded"] == captions["fresh"] and len(captions["fresh"]) == 5


def test_upgrade_with_quantize_and_what_it_refuses(tmp_path: Path, tiny_bundle: Path) -> None:
    old, _ = _format1_bundle(tmp_path / "old")
    both = tmp_path / "both"
    result = CliRunner().invoke(main, ["export", str(old), "-o", str(both), "--upgrade", "--quantize"])
    assert result.exit_code == 0, result.output
    assert load_bundle(both).has_int8_decoder and "upgrade" in load_bundle(both).provenance

    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(tmp_path / "x"), "--upgrade"])
    assert result.exit_code == 1 and "with its search graphs already: nothing to upgrade" in result.output
    result = CliRunner().invoke(main, ["export", str(old), "-o", str(tmp_path / "y")])
    assert result.exit_code == 2 and "--upgrade" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
