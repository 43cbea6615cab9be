"""``capcli caption`` options of issue 21: directory walks (--no-recursive, --exclude), --format json and
caption sidecar files (--sidecar, --skip-existing), with the fake captioner of test_cli_caption."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from PIL import Image
from test_cli_caption import fake, jsonl, make_pngs, run  # noqa: F401 (fake: the fixture)


def make_tree(root: Path) -> None:
    """root/a.png, root/b_mask.png, root/sub/c.png, root/sub/deeper/d.png, root/thumbs/e.png."""
    for name in ("a.png", "b_mask.png", "sub/c.png", "sub/deeper/d.png", "thumbs/e.png"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), 7).save(path)


def names(stdout: str, root: Path) -> list[str]:
    return [Path(r["source"]).relative_to(root).as_posix() for r in jsonl(stdout)]


def test_no_recursive_takes_only_the_top_level(tmp_path: Path, fake) -> None:
    make_tree(tmp_path)
    result = run(str(tmp_path), "--no-recursive")
    assert result.exit_code == 0, result.output
    assert names(result.stdout, tmp_path) == ["a.png", "b_mask.png"]


def test_exclude_matches_names_and_paths_and_skips_whole_directories(tmp_path: Path, fake) -> None:
    make_tree(tmp_path)
    result = run(str(tmp_path), "--exclude", "*_mask.png", "--exclude", "thumbs", "--exclude", "sub/deeper/*")
    assert result.exit_code == 0, result.output
    assert names(result.stdout, tmp_path) == ["a.png", "sub/c.png"]
    assert [r["index"] for r in jsonl(result.stdout)] == [0, 1]


def test_exclude_leaves_explicit_files_alone_and_an_emptied_directory_is_named(tmp_path: Path, fake) -> None:
    make_tree(tmp_path)
    explicit = str(tmp_path / "b_mask.png")
    result = run(str(tmp_path / "thumbs"), explicit, "--exclude", "*.png")
    assert result.exit_code == 0, result.output
    assert [r["source"] for r in jsonl(result.stdout)] == [explicit]
    assert "thumbs: no image files" in result.stderr


# --- --format json -----------------------------------------------------------------------------------


def test_json_is_one_array_with_error_records_as_in_jsonl(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 2)
    missing = str(tmp_path / "missing.png")
    result = run(*paths, missing, "--format", "json")
    assert result.exit_code == 3, result.output
    records = json.loads(result.stdout)
    assert records == jsonl(run(*paths, missing).stdout)  # the same records as JSONL, in one array
    assert [r["status"] for r in records] == ["ok", "ok", "error"] and records[2]["error_kind"] == "not_found"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert json.loads(run(str(empty), "--format", "json").stdout) == []


def test_an_interrupted_json_run_is_still_valid_json(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 6)
    out = tmp_path / "out.json"
    fake.on_batch = lambda n: n == 2 and os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during batch 2
    result = run(*paths, "-o", str(out), "--format", "json", "--batch-size", "2", "--workers", "1")
    assert result.exit_code == 130, result.output
    assert [r["source"] for r in json.loads(out.read_text())] == paths[:4]

    def interrupt(n: int) -> None:  # a second Ctrl-C: the batch is abandoned
        if n == 2:
            raise KeyboardInterrupt

    fake.calls, fake.on_batch = 0, interrupt
    result = run(*paths, "-o", str(out), "--format", "json", "--batch-size", "2", "--overwrite")
    assert result.exit_code == 130
    assert [r["source"] for r in json.loads(out.read_text())] == paths[:2]


def test_json_cannot_be_resumed(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 1)
    out = tmp_path / "out.json"
    assert run(*paths, "-o", str(out), "--format", "json").exit_code == 0
    result = run(*paths, "-o", str(out), "--format", "json", "--resume")
    assert result.exit_code == 2 and "need --format jsonl or csv" in result.stderr
