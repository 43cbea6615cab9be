"""``capcli caption`` options of issue 21: directory walks (--no-recursive, --exclude), --format json and
caption sidecar files (--sidecar, --skip-existing), with the fake captioner of test_cli_caption."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from test_cli_caption import jsonl, make_pngs, run

from capcli.cli import main


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


# --- --sidecar and --skip-existing -------------------------------------------------------------------


def test_sidecars_hold_the_caption_alone_and_records_go_only_where_asked(tmp_path: Path, fake) -> None:
    fake.name = lambda x: "Un café ☕ au soleil."
    paths = make_pngs(tmp_path / "in", 2)
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a picture")
    result = run(str(tmp_path / "in"), "--sidecar", ".txt")
    assert result.exit_code == 3, result.output
    assert result.stdout == ""  # the files are the output
    assert "2 captioned, 1 failed" in result.stderr
    for path in paths:
        assert Path(path).with_suffix(".txt").read_bytes() == "Un café ☕ au soleil.\n".encode()
    assert not broken.with_suffix(".txt").exists()  # a bad image gets no sidecar
    assert sorted(p.name for p in (tmp_path / "in").iterdir() if p.name.startswith(".")) == []  # no temp file

    for output in ("-", str(tmp_path / "out.jsonl")):
        result = run(str(tmp_path / "in"), "--sidecar", ".caption", "-o", output)
        assert result.exit_code == 3, result.output
        records = jsonl(result.stdout if output == "-" else Path(output).read_text())
        assert [r["status"] for r in records] == ["error", "ok", "ok"]  # error records as without --sidecar
        assert records[0]["error_kind"] == "not_an_image"
        assert Path(paths[0]).with_suffix(".caption").read_text(encoding="utf-8") == records[1]["caption"] + "\n"


def test_a_sidecar_is_replaced_atomically(tmp_path: Path, fake, monkeypatch: pytest.MonkeyPatch) -> None:
    [path] = make_pngs(tmp_path / "in", 1)
    sidecar = Path(path).with_suffix(".txt")
    sidecar.write_text("the old caption\n")

    def failing_replace(src, dst) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", failing_replace)
        result = run(path, "--sidecar", ".txt")
    assert result.exit_code == 1 and "cannot write" in result.stderr and str(sidecar) in result.stderr
    assert sidecar.read_text() == "the old caption\n"  # never truncated or half written
    assert sorted(p.name for p in sidecar.parent.iterdir()) == [Path(path).name, sidecar.name]  # no temp file left
    assert run(path, "--sidecar", ".txt").exit_code == 0
    assert sidecar.read_text().startswith("Brightness")


def test_skip_existing_does_not_even_read_those_images(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 3)
    Path(paths[0]).write_bytes(b"corrupt: would be an error record if it were read")
    Path(paths[0]).with_suffix(".txt").write_text("kept\n")
    Path(paths[2]).with_suffix(".txt").write_text("kept too\n")
    result = run(str(tmp_path / "in"), "--sidecar", ".txt", "--skip-existing", "-o", "-")
    assert result.exit_code == 0, result.output  # no error record: the corrupt image was never decoded
    [record] = jsonl(result.stdout)
    assert record["source"] == paths[1] and record["index"] == 1  # indexes stay those of the inputs
    assert sum(fake.batches) == 1
    assert "1 captioned, 0 failed, 2 skipped (sidecar exists)" in result.stderr
    assert Path(paths[0]).with_suffix(".txt").read_text() == "kept\n"
    assert Path(paths[2]).with_suffix(".txt").read_text() == "kept too\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["https://example.org/a.jpg", "--sidecar", ".txt"], "URL inputs cannot have one"),
        (["x.png", "--sidecar", ".png"], "would overwrite images"),
        (["x.png", "--sidecar", "txt"], "file suffix such as .txt"),
        (["x.png", "--sidecar", "./a.txt"], "file suffix such as .txt"),
        (["x.png", "--skip-existing"], "--skip-existing needs --sidecar"),
    ],
)
def test_sidecar_usage_errors_exit_2(args: list[str], needle: str, fake) -> None:
    result = run(*args)
    assert result.exit_code == 2 and needle in result.stderr and fake.calls == 0


def test_url_list_has_no_sidecars_and_a_url_on_stdin_is_an_error_record(tmp_path: Path, fake) -> None:
    result = CliRunner().invoke(main, ["url-list", "-", "--sidecar", ".txt"], input=b"https://example.org/a.jpg\n")
    assert result.exit_code == 2 and "url-list cannot write --sidecar files" in result.stderr
    [path] = make_pngs(tmp_path / "in", 1)
    result = run("-", "--sidecar", ".txt", "-o", "-", input=f"{path}\nhttps://example.org/a.jpg\n".encode())
    assert result.exit_code == 3, result.output
    ok, url = jsonl(result.stdout)
    assert ok["status"] == "ok" and url["error_kind"] == "unsupported_source" and "sidecar" in url["error"]
