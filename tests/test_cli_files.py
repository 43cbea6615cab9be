"""``capcli caption`` options of issue 21: directory walks (--no-recursive, --exclude), --format json and
caption sidecar files (--sidecar, --skip-existing), with the fake captioner of test_cli_caption."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from test_cli_caption import fake, jsonl, run  # noqa: F401 (fake: the fixture)


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
