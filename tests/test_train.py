"""The training loop on a tiny model and four real photos: it learns, resumes exactly, saves safely."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from example_photos import CAPTIONS, copy_photos  # noqa: E402
from resume_check import assert_same_training_state, train_one_epoch_then_stop  # noqa: E402
from tiny_bundle import TINY_TRAINING as TINY  # noqa: E402

from capcli.errors import FatalError  # noqa: E402
from capcli.text import detokenize, tokenize  # noqa: E402
from capcli.train import checkpoint  # noqa: E402
from capcli.train.backbones import preprocess_for  # noqa: E402
from capcli.train.features import cached_features, module_fingerprint  # noqa: E402
from capcli.train.loop import TrainOptions, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """4 real photos (the examples), one caption each, as a generic CSV whose dev split is copies of the same photos."""
    root = tmp_path_factory.mktemp("tiny")
    # Four photos a tiny random CNN can tell apart (greyscale, brown, red, dark blue), each with its shortest caption.
    first = {name: min(CAPTIONS[name], key=len) for name in ("camera.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg")}
    copy_photos(root, list(first))
    copy_photos(root, list(first), prefix="dev-")
    rows = ["image,caption,split"]
    for name, caption in first.items():
        rows += [f"{name},{caption},train", f"dev-{name},{caption},dev"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root, {str(root / f"dev-{name}"): caption for name, caption in first.items()}


def _options(data: Path, out: Path, cache: Path, **kw) -> TrainOptions:
    return TrainOptions(dataset="csv", data=str(data), out=str(out), cache_dir=str(cache), **{**TINY, **kw})


@pytest.fixture(scope="module")
def overfit_run(tiny_data: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny model trained until it has memorised the four photos' captions."""
    root = tmp_path_factory.mktemp("overfit")
    record = train(_options(tiny_data[0], root / "run", root / "cache", epochs=60, patience=10, dropout=0.0))
    return root / "run", record


def test_tiny_model_overfits_four_photos(
    tiny_data: tuple[Path, dict[str, str]], overfit_run: tuple[Path, dict]
) -> None:
    out, record = overfit_run
    captions = _read_captions(out / "best_dev_captions.jsonl")
    # Greedy decoding reproduces every training caption (the dev photos are the training photos).
    assert captions == {k: detokenize(tokenize(v)) for k, v in tiny_data[1].items()}
    assert record["best"]["metrics"]["dev_BLEU-4"] > 0.99
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == record["best"]["epoch"] + 10 < 60  # early stop after 10 epochs without gain
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "train.json").read_text())
    assert run["data"]["train"]["images"] == 4 and run["hardware"]["torch"] == torch.__version__
    assert run["vocab_size"] == record["vocab_size"]
    # The checkpoint is plain data: it loads with weights_only=True and rebuilds the model.
    payload = torch.load(out / "best.pt", weights_only=True)
    model, vocab = checkpoint.model_from_checkpoint(payload)
    assert len(vocab) == model.config.vocab_size and payload["provenance"]["dataset"] == "csv"


def test_export_and_runtime_caption_like_training(
    tiny_data: tuple[Path, dict[str, str]], overfit_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """best.pt -> capcli export -> capcli eval --beam 1: the ONNX runtime writes the training loop's captions."""
    pytest.importorskip("onnx")
    from click.testing import CliRunner

    from capcli.cli import main

    out, _ = overfit_run
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(out / "best.pt"), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    args = [
        "eval",
        "--model",
        str(tmp_path / "bundle"),
        "--dataset",
        "csv",
        "--data",
        str(tiny_data[0]),
        "--beam",
        "1",
        "--no-meteor",
        "--captions-out",
        str(tmp_path / "captions.jsonl"),
        "--json-out",
        str(tmp_path / "eval.json"),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _read_captions(tmp_path / "captions.jsonl") == _read_captions(out / "best_dev_captions.jsonl")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["metrics"]["BLEU-4"] > 0.99 and report["protocol"]["beam"] == 1
    assert "BLEU-4   1.000" in result.stdout


def _read_captions(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["source"]: row["caption"] for row in rows}


def test_resume_continues_bit_for_bit(tiny_data: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data = tiny_data[0]
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    train(_options(data, straight, cache, epochs=3, dropout=0.3, batch_size=2))

    resumed = tmp_path / "resumed"
    train_one_epoch_then_stop(_options(data, resumed, cache, epochs=3, dropout=0.3, batch_size=2))
    assert checkpoint.load(resumed / "last.pt")["epoch"] == 1
    with pytest.raises(FatalError, match="--resume"):
        train(_options(data, resumed, cache, epochs=3))
    # Options come from the checkpoint; the new command line's are ignored except the machine-local ones.
    train(_options(data, resumed, cache, epochs=99, lr=1.0), resume=True)

    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(resumed / "last.pt")
    assert a["epoch"] == 3
    assert_same_training_state(a, b)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 3


def test_ctrl_c_after_an_epoch_exits_130_and_says_how_to_resume(
    tiny_data: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from capcli.cli import main

    save = checkpoint.save

    def save_then_interrupt(path: Path, payload: dict) -> None:
        save(path, payload)
        if path.name == "last.pt":  # Ctrl-C once epoch 1 is safely on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    out = tmp_path / "run"
    args = ["train", "--dataset", "csv", "--data", str(tiny_data[0]), "--out", str(out), "--epochs", "3"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--backbone", "tiny", "--no-pretrained", "--workers", "0"]
    args += ["--feature-dim", "32", "--attention-dim", "32", "--embed-dim", "32", "--hidden-dim", "64"]
    args += ["--min-count", "1", "--batch-size", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130, result.output
    assert result.stderr.endswith(f"interrupted; continue with the same command plus --resume (--out {out})\n")
    assert checkpoint.load(out / "last.pt")["epoch"] == 1


def test_ctrl_c_under_torchrun_is_said_by_rank_0_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from capcli.cli import main
    from capcli.train import loop

    def interrupted(options: TrainOptions, resume: bool = False) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(main, ["train", "--dataset", "csv", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 130 and result.stderr == ""


def test_feature_cache_is_keyed_and_reused(tiny_data: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from capcli.train.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("tiny", pretrained=False)
    paths = sorted(p for p in tiny_data[0].glob("*.jpg") if not p.name.startswith("dev-"))
    pre = preprocess_for("tiny")
    identity = {"backbone": "tiny", "weights": module_fingerprint(backbone)}
    kw = dict(cache_dir=tmp_path, device=torch.device("cpu"), workers=0)
    first = cached_features(backbone, identity, pre, paths, **kw)
    assert first.array.shape == (4, 32, 8, 8) and first.array.dtype == np.float16 and not first.failed
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not any(".tmp" in f for f in files)  # <key>.npy and <key>.json
    # Same key: read back, not recomputed (a module that would crash proves it).
    again = cached_features(torch.nn.Identity(), identity, pre, paths, **kw)
    assert again.path == first.path and np.array_equal(again.array, first.array)
    # A different image list is a different entry; a sidecar-less .npy (a crash mid-write) is ignored.
    other = cached_features(backbone, identity, pre, paths[:2], **kw)
    assert other.path != first.path and np.array_equal(other.array, first.array[:2])
    first.path.with_suffix(".json").unlink()
    rebuilt = cached_features(backbone, identity, pre, paths, **kw)
    assert np.array_equal(rebuilt.array, first.array)
    # An image that does not decode gets a zero row and is listed, not a crash.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    mixed = cached_features(backbone, identity, pre, [paths[0], broken, paths[1]], **kw)
    assert mixed.failed == (1,) and not mixed.array[1].any() and np.array_equal(mixed.array[2], first.array[1])
    # Files copied anew with the same bytes (new mtimes): the entry is renamed to the new key, not recomputed.
    (tmp_path / "copy").mkdir()
    mine = [Path(shutil.copy(p, tmp_path / "copy")) for p in paths]
    before = cached_features(backbone, identity, pre, mine, **kw)
    others = {p.name for p in tmp_path.glob("*.npy")} - {before.path.name}
    os.utime(mine[0], ns=(mine[0].stat().st_atime_ns, mine[0].stat().st_mtime_ns + 10**9))
    touched = cached_features(torch.nn.Identity(), identity, pre, mine, **kw)
    assert touched.path != before.path and np.array_equal(touched.array, first.array)
    assert not before.path.exists() and not before.path.with_suffix(".json").exists()
    assert {p.name for p in tmp_path.glob("*.npy")} == {*others, touched.path.name}  # other image lists' stay
    # Files whose bytes changed make a new entry, which replaces the one made before.
    shutil.copy(paths[1], mine[0])
    after = cached_features(backbone, identity, pre, mine, **kw)
    assert after.path != touched.path and np.array_equal(after.array[0], first.array[1])
    assert np.array_equal(after.array[1:], first.array[1:])
    assert not touched.path.exists() and not touched.path.with_suffix(".json").exists()
    assert {p.name for p in tmp_path.glob("*.npy")} == {*others, after.path.name}
    with torch.no_grad():
        torch.nn.init.zeros_(next(backbone.parameters()))
    assert module_fingerprint(backbone) != identity["weights"]


def test_finetuning_trains_only_the_top_stages(tiny_data: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from capcli.train.backbones import build_backbone

    out = tmp_path / "run"
    train(_options(tiny_data[0], out, tmp_path / "cache", epochs=2, finetune_blocks=1, backbone_lr=1e-2))
    state = checkpoint.load(out / "last.pt")["model"]
    torch.manual_seed(0)  # the run's seed: the same initial backbone
    initial = {f"backbone.{k}": v for k, v in build_backbone("tiny", pretrained=False).state_dict().items()}
    changed = {k for k, v in initial.items() if not torch.equal(v, state[k])}
    assert changed == {"backbone.stages.2.0.weight", "backbone.stages.2.0.bias"}  # the last of three stages
    # The cache holds the frozen stages' output (32 channels at 16x16), not the final 8x8 grid.
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert {s["module"]["frozen_stages"] for s in sidecars} == {2}
    assert np.load(next((tmp_path / "cache").glob("*.npy"))).shape[1:] == (32, 16, 16)
