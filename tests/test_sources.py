"""Input specs -> Items: order, directories, globs, stdin, URLs, symlinks, odd names."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from capcli.sources import iter_items


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def sources(specs, stdin: bytes | None = None) -> list[str]:
    items = list(iter_items(specs, io.BytesIO(stdin) if stdin is not None else None))
    assert [it.index for it in items] == list(range(len(items)))
    return [it.source for it in items]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    touch(
        tmp_path,
        "d/b.jpg",
        "d/a.PNG",
        "d/notes.txt",
        "d/.hidden.jpg",
        "d/sub/c.jpg",
        "d/.git/x.jpg",
        "d/a2/z.webp",
        "top.jpg",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_directory_is_walked_recursively_sorted_images_only(tree: Path) -> None:
    # Names sorted within each directory, depth first; hidden entries and non-images left out.
    assert sources(["d"]) == ["d/a.PNG", "d/a2/z.webp", "d/b.jpg", "d/sub/c.jpg"]


def test_argument_order_is_kept_and_files_are_taken_whatever_their_suffix(tree: Path) -> None:
    assert sources(["top.jpg", "d/sub", "d/notes.txt", "top.jpg"]) == [
        "top.jpg",
        "d/sub/c.jpg",
        "d/notes.txt",
        "top.jpg",
    ]


def test_globs_sorted_and_double_star_at_any_depth(tree: Path) -> None:
    assert sources(["d/*.jpg"]) == ["d/b.jpg"]
    assert sources(["d/**/*.jpg"]) == ["d/b.jpg", "d/sub/c.jpg"]
    assert sources(["**/*.jpg"]) == ["d/b.jpg", "d/sub/c.jpg", "top.jpg"]
    assert sources(["d/**/**/*.jpg"]) == ["d/b.jpg", "d/sub/c.jpg"]  # no duplicates
    assert sources(["d/?.*"]) == ["d/a.PNG", "d/b.jpg"]
    assert sources(["d/*"]) == ["d/a.PNG", "d/b.jpg", "d/notes.txt"]  # directories not matched
    assert sources([str(tree / "d" / "s*" / "*.jpg")]) == [str(tree / "d/sub/c.jpg")]


def test_missing_path_and_empty_glob_become_not_found_items(tree: Path) -> None:
    items = list(iter_items(["nope.jpg", "d/*.gif", "top.jpg"]))
    assert [it.source for it in items] == ["nope.jpg", "d/*.gif", "top.jpg"]
    assert items[0].error is None and items[0].path == "nope.jpg"  # reading it says not_found
    assert items[1].error is not None and items[1].error.kind == "not_found"


def test_stdin_lists_paths_mixed_with_arguments(tree: Path) -> None:
    stdin = b"d/sub/c.jpg\r\n\nd/a2\nweird [1].jpg\n"
    assert sources(["top.jpg", "-", "d/b.jpg"], stdin) == [
        "top.jpg",
        "d/sub/c.jpg",
        "d/a2/z.webp",
        "weird [1].jpg",
        "d/b.jpg",
    ]


def test_urls_become_url_items(tree: Path) -> None:
    items = list(iter_items(["https://example.org/a.jpg", "-"], io.BytesIO(b"HTTP://h/b.png\n")))
    assert [(it.url, it.path) for it in items] == [("https://example.org/a.jpg", None), ("HTTP://h/b.png", None)]


def test_symlink_loops_end_and_linked_directories_are_followed(tmp_path: Path) -> None:
    touch(tmp_path, "root/a.jpg", "other/b.jpg")
    (tmp_path / "root" / "loop").symlink_to(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "other")
    root = str(tmp_path / "root")
    assert sources([root]) == [f"{root}/a.jpg", f"{root}/link/b.jpg"]
    assert sources([f"{root}/**/*.jpg"]) == [f"{root}/a.jpg", f"{root}/link/b.jpg"]


def test_unreadable_directory_becomes_an_error_item(tmp_path: Path, monkeypatch) -> None:
    touch(tmp_path, "locked/a.jpg", "open/b.jpg")
    real_scandir = os.scandir

    def scandir(path):  # chmod 0 does not stop root, so refuse the listing here
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(iter_items([str(tmp_path)]))
    assert [(Path(it.source).name, it.error and it.error.kind) for it in items] == [
        ("locked", "permission_denied"),
        ("b.jpg", None),
    ]


def test_non_utf8_names_keep_their_bytes(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    with open(raw, "wb") as f:
        f.write(b"x")
    [from_dir] = list(iter_items([str(tmp_path)]))
    [from_stdin] = list(iter_items(["-"], io.BytesIO(raw + b"\n")))
    assert os.fsencode(from_dir.path) == raw and from_stdin.path == from_dir.path


def test_items_are_streamed_lazily(tmp_path: Path) -> None:
    class Lines:  # stdin that fails if read past the first line
        def __iter__(self):
            yield b"first.jpg\n"
            raise AssertionError("read ahead")

    first = next(iter_items(["-"], Lines()))
    assert first.source == "first.jpg"
