"""Caption metrics on hand-made examples."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capcli.metrics import METRICS, coco_scores, quick_scores

REFS = {
    "a.jpg": ["A dog runs across the green grass .", "A brown dog is running on the lawn ."],
    "b.jpg": ["Two children play in the sand at the beach .", "Kids playing on a sandy beach ."],
    "c.jpg": ["A man rides a red bicycle down the street .", "A cyclist on a city road ."],
}


def needs_pycocoevalcap() -> None:
    pytest.importorskip("pycocoevalcap", reason="scoring needs pycocoevalcap (the train extra)")


def test_quick_scores_perfect_vs_constant() -> None:
    needs_pycocoevalcap()
    perfect = quick_scores(REFS, {k: v[0] for k, v in REFS.items()})
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["CIDEr"] > 1.0
    constant = quick_scores(REFS, {k: "A man in a red shirt is standing on the street ." for k in REFS})
    assert constant["BLEU-4"] < 0.3 and constant["CIDEr"] < 0.5 * perfect["CIDEr"]


def test_quick_scores_ignores_case_and_punctuation() -> None:
    needs_pycocoevalcap()
    a = quick_scores(REFS, {"a.jpg": "A dog runs across the green grass.", "b.jpg": "kids playing on a sandy beach"})
    b = quick_scores(REFS, {"a.jpg": "a dog runs across the green grass", "b.jpg": "Kids playing, on a sandy beach!"})
    assert a == b


def test_hypotheses_must_have_references() -> None:
    with pytest.raises(ValueError, match="no references"):
        quick_scores(REFS, {"zzz.jpg": "A dog."})
    with pytest.raises(ValueError, match="no hypotheses"):
        quick_scores(REFS, {})


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer and METEOR need Java")
def test_coco_protocol() -> None:
    needs_pycocoevalcap()
    perfect = coco_scores(REFS, {k: v[0] for k, v in REFS.items()})
    assert list(perfect) == list(METRICS)
    assert perfect["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE-L"] > 0.9 and perfect["METEOR"] > 0.5 and perfect["CIDEr"] > 1.0
    # An empty hypothesis must not shift the tokenizer's lines (scores stay per-image).
    mixed = coco_scores(REFS, {"a.jpg": "", "b.jpg": REFS["b.jpg"][1], "c.jpg": "A dog ."}, meteor=False)
    assert "METEOR" not in mixed
    assert 0.0 < mixed["CIDEr"] < perfect["CIDEr"] and mixed["BLEU-1"] < 1.0


@pytest.fixture
def flickr_dev(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    lines = ["image,caption"]
    for name, refs in REFS.items():
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
        lines += [f"{name},{r}" for r in refs]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("\n".join(REFS) + "\n")
    return tmp_path


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_eval_scores_a_captions_file(flickr_dev, tmp_path) -> None:
    needs_pycocoevalcap()
    import json

    from click.testing import CliRunner

    from capcli.cli import main

    # capcli's own CSV output: full paths, one error record, one row of another data set.
    out = tmp_path / "captions.csv"
    out.write_text(
        "index,source,status,caption,score,error_kind,error,n_frames\n"
        f"0,{flickr_dev / 'images' / 'a.jpg'},ok,{REFS['a.jpg'][0]},-1.0,,,\n"
        f"1,{flickr_dev / 'images' / 'b.jpg'},error,,,decode_error,broken,\n"
        "2,elsewhere/zzz.jpg,ok,A cat.,-1.0,,,\n"
    )
    args = [
        "eval",
        "--captions",
        str(out),
        "--dataset",
        "flickr8k",
        "--data",
        str(flickr_dev),
        "--no-meteor",
        "--json-out",
        str(tmp_path / "report.json"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["protocol"]["images"] == 1 and report["protocol"]["split_images"] == 3
    assert report["protocol"]["images_failed"] == {"decode_error": 1}
    assert report["metrics"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert "dev: 1 of 3 images, 2 references" in result.stdout and "BLEU-4   1.000" in result.stdout
    assert "1 rows" in result.stderr and "2 images of the split have no caption" in result.stderr

    # A plain image,caption JSONL matched by file name; identical to the quick (Java-free) direction.
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"image": k, "caption": "A dog is running ."}) + "\n" for k in REFS))
    result = CliRunner().invoke(main, [*args[:2], str(plain), *args[3:]])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["protocol"]["images"] == 3 and 0 < report["metrics"]["CIDEr"] < 1


def test_eval_needs_a_usable_split(tmp_path) -> None:
    from click.testing import CliRunner

    from capcli.cli import main

    (tmp_path / "c.jsonl").write_text("")
    result = CliRunner().invoke(
        main, ["eval", "--captions", str(tmp_path / "c.jsonl"), "--dataset", "flickr8k", "--data", str(tmp_path)]
    )
    assert result.exit_code == 1 and "captions file not found" in result.output


def test_without_the_train_extra_these_tests_skip_instead_of_failing() -> None:
    """`pip install capcli[dev]` without `train`: the tests that need pycocoevalcap skip, the others pass."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here / "without_train"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not without_the_train",
            str(Path(__file__)),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=here.parent,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "4 skipped" in proc.stdout and "failed" not in proc.stdout


def test_eval_with_a_bad_device_is_a_usage_error(tmp_path) -> None:
    from click.testing import CliRunner

    from capcli.cli import main

    result = CliRunner().invoke(main, ["eval", "--dataset", "flickr8k", "--data", str(tmp_path), "--device", "foo"])
    assert result.exit_code == 2
    assert "device must be auto, cpu, cuda or cuda:N, not 'foo'" in result.output
    assert "Traceback" not in result.output
