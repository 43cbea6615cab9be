"""The Python API, through its public names only: ``capcli.load``, ``Model.caption``, ``Model.caption_one``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import capcli
from capcli.cli import main


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> capcli.Model:
    return capcli.load(tiny_bundle, device="cpu", beam=2, batch_size=2, workers=1)


def test_caption_gives_the_records_the_cli_writes(model: capcli.Model, tiny_bundle: Path, photos: Path) -> None:
    paths = sorted(str(p) for p in photos.iterdir())
    records = list(model.caption(paths))
    result = CliRunner().invoke(
        main, ["caption", *paths, "--model", str(tiny_bundle), "--device", "cpu", "--beam", "2", "--batch-size", "2"]
    )
    assert result.exit_code == 0, result.stderr
    assert records == [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(len(paths)))
    assert all(r["status"] == "ok" and r["caption"] for r in records)


def test_paths_pil_images_and_arrays_are_inputs(model: capcli.Model, photos: Path) -> None:
    path = sorted(photos.iterdir())[0]
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    from_path = model.caption_one(path)
    from_pil = model.caption_one(picture)
    from_array = model.caption_one(np.asarray(picture))
    from_floats = model.caption_one(np.asarray(picture, dtype=np.float32) / 255.0)
    assert from_path["source"] == str(path)
    assert from_pil["caption"] == from_array["caption"] == from_floats["caption"]
    assert isinstance(from_pil["score"], float) and from_pil["score"] < 0


def test_a_bad_input_is_an_error_record_and_the_others_go_on(model: capcli.Model, photos: Path, tmp_path: Path) -> None:
    good = str(sorted(photos.iterdir())[0])
    missing = str(tmp_path / "missing.jpg")
    records = list(model.caption([missing, good, np.zeros((4, 4, 7), np.uint8)]))
    assert [r["status"] for r in records] == ["error", "ok", "error"]
    assert records[0]["error_kind"] == "not_found" and records[2]["error_kind"] == "decode_error"
    with pytest.raises(capcli.ItemError) as caught:
        model.caption_one(missing)
    assert caught.value.kind == "not_found"


def test_load_refuses_a_bad_device_or_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(capcli.UsageError, match="device must be"):
        capcli.load(device="gpu")
    with pytest.raises(capcli.FatalError):
        capcli.load(tmp_path / "no-bundle-here", device="cpu")


def test_the_readme_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python") :]
    example = section[section.index("```python\n") + 10 : section.index("\n```\n")]
    monkeypatch.chdir(repo)
    monkeypatch.delenv("CAPCLI_MODEL", raising=False)
    exec(compile(example, "README.md", "exec"), {})


def test_help_lists_every_command_without_truncation() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    listed = result.stdout.split("Commands:", 1)[1]
    for name, command in main.commands.items():
        assert name in listed
        first_line = command.help.strip().splitlines()[0].rstrip(".")
        assert " ".join(first_line.split()) in " ".join(listed.split()), name
    assert "..." not in listed
