"""Caption metrics on hand-made examples."""

from __future__ import annotations

import shutil

import pytest

from capcli.metrics import METRICS, coco_scores, quick_scores

REFS = {
    "a.jpg": ["A dog runs across the green grass .", "A brown dog is running on the lawn ."],
    "b.jpg": ["Two children play in the sand at the beach .", "Kids playing on a sandy beach ."],
    "c.jpg": ["A man rides a red bicycle down the street .", "A cyclist on a city road ."],
}


def test_quick_scores_perfect_vs_constant() -> None:
    perfect = quick_scores(REFS, {k: v[0] for k, v in REFS.items()})
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["CIDEr"] > 1.0
    constant = quick_scores(REFS, {k: "A man in a red shirt is standing on the street ." for k in REFS})
    assert constant["BLEU-4"] < 0.3 and constant["CIDEr"] < 0.5 * perfect["CIDEr"]


def test_quick_scores_ignores_case_and_punctuation() -> None:
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
    perfect = coco_scores(REFS, {k: v[0] for k, v in REFS.items()})
    assert list(perfect) == list(METRICS)
    assert perfect["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE-L"] > 0.9 and perfect["METEOR"] > 0.5 and perfect["CIDEr"] > 1.0
    # An empty hypothesis must not shift the tokenizer's lines (scores stay per-image).
    mixed = coco_scores(REFS, {"a.jpg": "", "b.jpg": REFS["b.jpg"][1], "c.jpg": "A dog ."}, meteor=False)
    assert "METEOR" not in mixed
    assert 0.0 < mixed["CIDEr"] < perfect["CIDEr"] and mixed["BLEU-1"] < 1.0
