"""The bundle's trigram table end to end: ``capcli export --trigrams-from`` writes it, ``load_bundle`` checks it,
the other exports carry it, and ``capcli caption --unseen-trigram-penalty`` keeps to the training phrasing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from example_photos import NAMES, copy_photos

from capcli.bundle import TRIGRAMS, load_bundle
from capcli.cli import main
from capcli.errors import BundleError
from capcli.phrasing import table_bytes, trigram_table
from capcli.text import tokenize
from capcli.train.phrasing import seen_trigrams, unseen_trigrams

pytest.importorskip("torch", reason="building the tiny bundle needs the train extra")
from tiny_bundle import CAPTIONS  # noqa: E402  (needs torch only to build models, not to import)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's captions as a generic CSV data set over the example photos, all in train."""
    root = tmp_path_factory.mktemp("phrasing") / "data"
    copy_photos(root)
    rows = ["image,caption,split"] + [f"{NAMES[i % len(NAMES)]},{c},train" for i, c in enumerate(CAPTIONS)]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def phrased(tiny_bundle: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phrased") / "bundle"
    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(out), "--trigrams-from", f"csv={data}"])
    assert result.exit_code == 0, result.output
    assert f"trigram table: {len(trigram_table(map(tokenize, CAPTIONS), load_bundle(out).vocab)):,} trigrams" in (
        result.output
    )
    return out


def caption(bundle: Path, *args: str) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(main, ["caption", "--model", str(bundle), "--device", "cpu", "--workers", "1", *args])
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_export_adds_the_training_texts_trigrams_and_changes_nothing_else(tiny_bundle: Path, phrased: Path) -> None:
    bundle, source = load_bundle(phrased), load_bundle(tiny_bundle)
    assert source.trigrams is None and bundle.data_files == (TRIGRAMS,)
    assert bundle.trigrams is not None
    np.testing.assert_array_equal(bundle.trigrams, trigram_table(map(tokenize, CAPTIONS), bundle.vocab))
    assert all(bundle.files[name] == data for name, data in source.files.items())  # the graphs, byte for byte
    record = bundle.meta["provenance"]["trigrams"]
    assert record["sentences"] == len(CAPTIONS) and record["trigrams"] == len(bundle.trigrams)
    assert record["from"][0]["dataset"] == "csv" and "--trigrams-from csv=" in record["command"]
    info = CliRunner().invoke(main, ["info", "--model", str(phrased), "--device", "cpu", "--json"])
    assert json.loads(info.stdout)["trigrams"] == len(bundle.trigrams)
    assert "trigrams" not in json.loads(
        CliRunner().invoke(main, ["info", "--model", str(tiny_bundle), "--json"]).stdout
    )


def test_a_heavy_penalty_keeps_every_caption_to_the_training_phrasing(data: Path, phrased: Path) -> None:
    seen = seen_trigrams(map(tokenize, CAPTIONS))
    photos = [str(data / name) for name in NAMES]
    code, free, _ = caption(phrased, *photos)
    assert code == 0 and any(unseen_trigrams(tokenize(r["caption"]), seen) for r in free)  # a random model
    for beam in ("1", "3"):
        code, records, _ = caption(phrased, *photos, "--beam", beam, "--unseen-trigram-penalty", "100")
        assert code == 0 and len(records) == len(photos)
        assert all(r["caption"] and not unseen_trigrams(tokenize(r["caption"]), seen) for r in records)
    code, _, stderr = caption(phrased, photos[0], "--unseen-trigram-penalty", "3", "--search", "graph")
    assert code != 0 and "numpy search" in stderr


def test_the_penalty_needs_a_bundle_with_a_table(tiny_bundle: Path, data: Path) -> None:
    code, records, stderr = caption(tiny_bundle, str(data / NAMES[0]), "--unseen-trigram-penalty", "3")
    assert code == 2 and records == [] and "no trigram table" in stderr and "--trigrams-from" in stderr


def test_quantize_carries_the_table(phrased: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(phrased), "-o", str(tmp_path / "int8"), "--quantize"])
    assert result.exit_code == 0, result.output
    quantized = load_bundle(tmp_path / "int8")
    assert quantized.has_int8_decoder and quantized.files[TRIGRAMS] == load_bundle(phrased).files[TRIGRAMS]


def test_an_export_from_a_checkpoint_writes_the_table_too(data: Path, tmp_path: Path) -> None:
    from tiny_bundle import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(out), "--trigrams-from", f"csv={data}"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.trigrams is not None
    np.testing.assert_array_equal(bundle.trigrams, trigram_table(map(tokenize, CAPTIONS), bundle.vocab))


def test_a_table_of_another_vocabulary_is_refused(phrased: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(phrased, broken)
    data = table_bytes(np.array([[1, 1, 10_000]]))
    (broken / TRIGRAMS).write_bytes(data)
    meta = json.loads((broken / "model.json").read_text())
    meta["files"][TRIGRAMS]["sha256"] = hashlib.sha256(data).hexdigest()
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"{TRIGRAMS}: not a trigram table of this vocabulary"):
        load_bundle(broken)


def test_trigrams_from_names_a_data_set_kind_and_folder(tiny_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_bundle), "-o", str(tmp_path / "x"), "--trigrams-from", "x"])
    assert result.exit_code == 2 and "DATASET=DIR" in result.output and not (tmp_path / "x").exists()


def test_the_shipped_model_has_the_table_of_its_training_text_and_keeps_to_it() -> None:
    from example_photos import example_paths

    import capcli

    model = capcli.load(device="cpu", unseen_trigram_penalty=3.0)
    bundle = model.bundle
    assert bundle is not None and bundle.trigrams is not None
    assert bundle.meta["provenance"]["trigrams"]["sentences"] == 79_906  # Flickr8k train, coco-everyday train + text
    seen = {tuple(row) for row in bundle.trigrams.tolist()}
    for record in model.caption(str(p) for p in example_paths()):
        ids = bundle.vocab.encode(tokenize(record["caption"]))
        padded = [bundle.vocab.start_id] * 2 + ids + [bundle.vocab.end_id]
        assert record["status"] == "ok" and all(t in seen for t in zip(padded, padded[1:], padded[2:]))
