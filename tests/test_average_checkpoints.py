"""benchmarks/average_checkpoints.py, which made the shipped model: what it averages and what it records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "average_checkpoints.py"


def checkpoint(path: Path, decoder: float, tagger: float, command: str, **config: object) -> Path:
    torch.save(
        {
            "config": {"vocab_size": 2, "decoder": "gru", **config},
            "vocab": ["<pad>", "a"],
            "epoch": 2,
            "model": {
                "decoder.w": torch.full((2, 2), decoder),
                "tagger.bn.running_var": torch.full((2,), tagger),
                "tagger.bn.num_batches_tracked": torch.tensor(int(decoder)),
            },
            "optimizer": {"state": {}},
            "provenance": {"command": command, "data": {"flickr8k": 30000}, "dev_metrics": {"CIDEr": decoder}},
        },
        path,
    )
    return path


def average(tmp_path: Path, *only: str) -> dict:
    first = checkpoint(tmp_path / "a.pt", 1.0, 10.0, "run a")
    last = checkpoint(tmp_path / "b.pt", 3.0, 1.0, "run b")
    args = [sys.executable, str(SCRIPT), str(first), str(last), "-o", str(tmp_path / "mean.pt")]
    subprocess.run([*args, *(["--only", *only] if only else [])], check=True, capture_output=True)
    return torch.load(tmp_path / "mean.pt", weights_only=False)


def test_floats_are_averaged_and_integers_come_from_the_last(tmp_path: Path) -> None:
    mean = average(tmp_path)
    assert torch.equal(mean["model"]["decoder.w"], torch.full((2, 2), 2.0))
    assert torch.equal(mean["model"]["tagger.bn.running_var"], torch.full((2,), 5.5))
    assert int(mean["model"]["tagger.bn.num_batches_tracked"]) == 3
    assert "optimizer" not in mean and mean["finished"] is True


def test_only_averages_the_named_weights_and_the_provenance_keeps_each_source(tmp_path: Path) -> None:
    mean = average(tmp_path, "decoder.")
    assert torch.equal(mean["model"]["decoder.w"], torch.full((2, 2), 2.0))
    assert torch.equal(mean["model"]["tagger.bn.running_var"], torch.full((2,), 1.0))  # the last one's, whole
    provenance = mean["provenance"]
    assert provenance["recipe"] == "weight average" and provenance["averaged_only"] == ["decoder."]
    assert provenance["data"] == {"flickr8k": 30000}
    assert "dev_metrics" not in provenance  # the last source's figures are not the mean's
    assert [s["provenance"]["command"] for s in provenance["averaged"]] == ["run a", "run b"]
    assert all(len(s["sha256"]) == 64 for s in provenance["averaged"])


def test_a_config_from_before_a_field_matches_its_default_and_another_config_is_refused(tmp_path: Path) -> None:
    older = checkpoint(tmp_path / "a.pt", 1.0, 1.0, "run a")  # written before ModelConfig.concept_view
    newer = checkpoint(tmp_path / "b.pt", 3.0, 1.0, "run b", concept_view=0.0)
    other = checkpoint(tmp_path / "c.pt", 3.0, 1.0, "run c", hidden_dim=64)
    out = ["-o", str(tmp_path / "mean.pt")]
    subprocess.run([sys.executable, str(SCRIPT), str(older), str(newer), *out], check=True, capture_output=True)
    refused = subprocess.run(
        [sys.executable, str(SCRIPT), str(older), str(other), *out], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "another model config" in refused.stderr
