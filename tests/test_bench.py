"""capcli bench: every scenario runs and reports, on a tiny model and a few real photos."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from capcli.bench import BenchConfig, Ratio, Result, ratios, scenarios
from capcli.bench.scenarios import fastest
from capcli.cli import main

STAGES_BY_KIND = {
    "limit": {"encode"},
    "read": {"read"},
    "capcli": {"read", "encode", "decode", "write", "idle"},
    "tutorial": {"read", "encode", "decode", "write"},
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle's own weights as a training checkpoint (same vocabulary, seed and config)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from tiny_bundle import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.mark.slow
def test_bench_runs_every_scenario_and_reports_ratios(
    tiny_bundle: Path, tiny_checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--model",
        str(tiny_bundle),
        "--images",
        str(photos),
        "-n",
        "8",
        "--batch-size",
        "4",
        "--checkpoint",
        str(tiny_checkpoint),
        "--big-size",
        "400x300",
        "--memory",
        "--memory-counts",
        "8,12",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())

    kinds = {s.key: s.kind for s in scenarios(BenchConfig(None, photos, big=True, memory=True, memory_counts=(8, 12)))}
    results = {r["key"]: r for r in data["results"]}
    assert set(results) == set(kinds)
    for key, r in results.items():
        assert r["skipped"] is None, key
        assert r["images"] == (12 if key == "memory_12" else 8)
        assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["peak_rss_mib"] > 0
        assert set(r["stages"]) == STAGES_BY_KIND[kinds[key]], key
        assert all(math.isfinite(v) and v >= 0 for v in r["stages"].values()) and sum(r["stages"].values()) > 0
        assert r["failed"] == 0
        # How busy the rest of the machine was meanwhile: never more cores than it has.
        assert 0 <= r["info"]["other_cores"] <= (os.cpu_count() or 1) + 0.25, r["info"][
            "other_cores"
        ]  # clock-tick jitter
        if kinds[key] == "read":  # on one thread and on the pipeline's readers, the latter reported
            rates = r["info"]["rates_by_threads"]
            assert set(rates) == {"1", str(r["info"]["workers"])} and rates[str(r["info"]["workers"])] == pytest.approx(
                r["images_per_s"], rel=1e-3
            )
        if kinds[key] == "capcli":  # warmed up untimed first, as timed: one batch of 4 per lane
            assert r["info"]["warm_up"]["images"] == r["info"]["lanes"] * 4
            assert r["info"]["warm_up"]["images_per_s"] > 0
    # Both ran the same model; with this 64-px model capcli's JPEG draft decoding changes some pixels.
    assert 0.5 <= results["tutorial_greedy"]["info"]["same_captions_as_capcli_greedy"] <= 1.0

    names = {r["name"]: r for r in data["ratios"]}
    assert len(names) == 7
    for r in names.values():
        assert r["value"] > 0
        assert (r["ok"] is None) == (r["target"] == "")
    assert data["machine"]["onnxruntime"] and data["machine"]["providers"] == ["CPUExecutionProvider"]
    assert data["machine"]["physical_cores"] >= 1 and data["machine"]["cpu"]
    # The tables name every scenario and ratio, and the machine.
    for text in [*(r["label"] for r in data["results"]), *names, "CPUExecutionProvider", "peak MiB"]:
        assert text in result.output


def test_tutorial_is_skipped_with_a_reason_without_a_checkpoint(tmp_path: Path) -> None:
    cfg = BenchConfig(None, tmp_path)
    from capcli.bench.runner import _skip_reason

    for s in scenarios(cfg):
        reason = _skip_reason(s, cfg)
        assert (reason is not None) == (s.kind == "tutorial")
        if reason:
            assert "--checkpoint" in reason


def test_ratios_use_the_fastest_rounds_and_mark_targets() -> None:
    def res(key: str, *rates: float, peak: float = 100.0) -> Result:
        return fastest([Result(key, key, images=10, images_per_s=r, peak_rss_mib=peak + r) for r in rates])

    results = {
        "limit": res("limit", 10, 20, 15),  # fastest 20
        "beam3": res("beam3", 18, 17, 16),  # fastest 18
        "greedy": res("greedy", 19),
        "tutorial_beam3": res("tutorial_beam3", 5),
        "tutorial_greedy": Result("tutorial_greedy", "t", skipped="no checkpoint"),
        "beam3_big": res("beam3_big", 8),
        "memory_1000": res("memory_1000", 1, peak=100),
        "memory_20000": res("memory_20000", 1, peak=120),
    }
    assert results["limit"].rates == [10, 20, 15] and results["limit"].peak_rss_mib == 120
    by_name = {r.name: r for r in ratios(results)}
    assert by_name["capcli beam 3 / limit"] == Ratio("capcli beam 3 / limit", 0.9, ">= 0.85", True)
    assert by_name["reading alone / limit"] == Ratio("reading alone / limit", None, ">= 1", None)  # not measured
    assert by_name["capcli beam 3 / tutorial beam 3"].value == 3.6
    assert by_name["capcli greedy / tutorial greedy"].value is None  # skipped, not a zero
    assert by_name["capcli beam 3: big JPEGs / photos"].ok is False  # 8 / 18 < 0.5
    assert by_name["peak memory: 20,000 / 1,000 inputs"].ok is False  # 121 / 101 > 1.10


def test_bench_defaults_to_the_example_photos_and_no_help_names_the_build_machines_data() -> None:
    from capcli.cli.bench import default_images

    assert default_images() == Path(__file__).resolve().parents[1] / "examples"
    for command in ("caption", "url-list", "bench", "eval", "train", "train-grounded", "export", "info", "review"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, command
        assert "shared/data" not in result.output, command  # a folder only this project's build machines have
    assert "examples/" in CliRunner().invoke(main, ["bench", "--help"]).output


def test_bench_float16_measures_the_float16_encoder_everywhere(tiny_bundle: Path, photos: Path, tmp_path: Path) -> None:
    """--precision float16 reaches every scenario's captioner, the limit's one-session arrangement too."""
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_bundle), "--images", str(photos), "-n", "4", "--batch-size", "2"]
    args += ["--no-big", "--device", "cpu", "--precision", "float16", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ran = {r["key"]: r for r in json.loads(out.read_text())["results"] if not r["skipped"]}
    assert {"limit", "greedy", "beam3"} <= set(ran)
    for key in ("limit", "greedy", "beam3"):
        assert ran[key]["info"]["encoder"] == "float16" and ran[key]["info"]["decoder"] == "float", key


def test_under_cuda_the_limit_also_times_the_encoder_with_its_outputs_left_on_the_gpu(
    tiny_bundle: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search graph reads the encoder's outputs on the GPU, so the limit must not charge their copy back:
    under CUDA it times every arrangement both ways, the encoder taking pixels (as capcli runs it there) and
    float input (to show what the pixels save), and takes the fastest (simulated on the CPU provider)."""
    from capcli.bench.scenarios import Scenario
    from capcli.bench.worker import _limit
    from capcli.runtime import Captioner

    made = Captioner.__init__

    def as_on_cuda(self: Captioner, *args: object, **kwargs: object) -> None:
        if kwargs.get("pixel_input") is None:
            kwargs["pixel_input"] = True  # what None means under CUDA where onnx is installed
        made(self, *args, **kwargs)
        self._cuda_id, self._context_memory = 0, ("cpu", 0)  # what CUDA sets to 0 and ("cuda", 0)

    monkeypatch.setattr(Captioner, "__init__", as_on_cuda)
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(map(str, photos.iterdir()))[:4]))
    spec = {"listing": str(listing), "model": str(tiny_bundle), "device": "cpu", "precision": "auto"}
    spec |= {"batch_size": 2, "workers": 1, "threads": 1, "lanes": 2}
    result = _limit(Scenario("limit", "limit", "limit", "photos", 1, 4), spec)
    rates = result.info["rates_by_arrangement"]
    ways = {"2x1 pixels", "1x2 pixels", "2x1"}
    assert set(rates) == ways | {f"{way} in place" for way in ways}
    assert result.info["arrangement"] in rates and result.info["device"] == "cuda:0"
    assert result.images == 4 and result.seconds == pytest.approx(4 / max(rates.values()), rel=1e-2)
