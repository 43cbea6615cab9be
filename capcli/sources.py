"""Expand input specs (files, directories, globs, ``-``, URLs) into a lazy stream of Items.

Order is the argument order; within a directory or a glob, entries are walked
depth first with names sorted (files and subdirectories interleaved by name).
Only one directory listing is held at a time, so a million paths are never
listed in full. Paths stay ``str`` decoded with the file-system encoding and
``surrogateescape`` (``os.fsdecode``), so names that are not UTF-8 reach
``open()`` unchanged.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, BinaryIO

from capcli.errors import ItemError

# What a directory walk picks up; explicit files and glob matches are taken whatever their name.
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .webp .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm"
    " .tga .ico .jp2 .j2k .heic .heif .avif".split()
)

# Items walked ahead of the captioning to learn their number: a few tens of MB at most.
LOOKAHEAD = 100_000

_MAGIC = re.compile(r"[*?[]")
_URL = re.compile(r"https?://", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One input: exactly one output record is produced for it."""

    index: int
    source: str  # the record key: the path as walked or given, or the URL
    path: str | None = None
    url: str | None = None
    error: ItemError | None = None  # found while expanding (e.g. an unreadable directory)
    extra: Mapping[str, Any] | None = None  # more record fields, e.g. url-list's id column
    image: Any = None  # an image already in memory (PIL image or numpy array), from the Python API


@dataclass(frozen=True)
class Walk:
    """How directory inputs are walked: into subdirectories or not, and the names left out."""

    recursive: bool = True
    exclude: tuple[str, ...] = ()  # globs matched against each entry's name and its path under the input

    def excluded(self, name: str, relative: str) -> bool:
        return any(fnmatchcase(name, p) or fnmatchcase(relative, p) for p in self.exclude)


def is_url(spec: str) -> bool:
    """An http(s) URL input (any case)."""
    return bool(_URL.match(spec))


def iter_items(
    specs: Iterable[str],
    stdin: BinaryIO | None = None,
    on_empty: Callable[[str], None] | None = None,
    walk: Walk = Walk(),
) -> Iterator[Item]:
    """Items for ``specs`` in order, numbered from 0; ``-`` reads paths from ``stdin``.

    ``on_empty(directory)`` is called for a directory input that holds no image (it yields no item).
    ``walk`` applies to directory inputs only: files and globs named explicitly are taken as given.
    """
    index = 0
    for spec in specs:
        for source, path, url, error in _expand_spec(spec, stdin, on_empty, walk):
            yield Item(index, source, path, url, error)
            index += 1


_Entry = tuple[str, str | None, str | None, ItemError | None]  # source, path, url, error


def _expand_spec(
    spec: str, stdin: BinaryIO | None, on_empty: Callable[[str], None] | None, walk: Walk
) -> Iterator[_Entry]:
    if spec == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        for line in stream:  # bytes: file names need not be UTF-8
            name = os.fsdecode(line.rstrip(b"\r\n"))
            if name:
                yield from _expand_path(name, glob=False, on_empty=on_empty, walk=walk)
    else:
        yield from _expand_path(spec, glob=True, on_empty=on_empty, walk=walk)


def _expand_path(
    spec: str, glob: bool, on_empty: Callable[[str], None] | None = None, walk: Walk = Walk()
) -> Iterator[_Entry]:
    if "\0" in spec:  # only a stdin list can hold one; no file name can
        yield spec, None, None, ItemError("invalid_input", "the path contains a NUL byte")
    elif is_url(spec):
        yield spec, None, spec, None
    elif os.path.isdir(spec):
        empty = True
        for entry in _walk(spec, visited=set(), walk=walk):
            empty = False
            yield entry
        if empty and on_empty is not None:
            on_empty(spec)
    elif glob and _MAGIC.search(spec) and not os.path.lexists(spec):
        matched = False
        for path in _glob(spec):
            matched = True
            yield path, path, None, None
        if not matched:
            yield spec, spec, None, ItemError("not_found", f"no file matches {spec!r}")
    else:
        # A file, or a missing path: reading it reports not_found / permission_denied.
        yield spec, spec, None, None


def _listdir(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory or ".") as it:
        return sorted(it, key=lambda e: e.name)


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path or ".")
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _walk(directory: str, visited: set[tuple[int, int]], walk: Walk, relative: str = "") -> Iterator[_Entry]:
    """Image files under ``directory``; symlinked directories are followed once each.

    ``relative``: ``directory``'s path under the input directory, with ``/`` separators (for ``walk.exclude``).
    """
    key = _dir_key(directory)
    if key is None or key in visited:  # a symlink loop, or a directory reached twice
        return
    visited.add(key)
    try:
        entries = _listdir(directory)
    except OSError as exc:
        yield directory, directory, None, _list_error(directory, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):  # hidden files, .DS_Store, ._AppleDouble
            continue
        path = os.path.join(directory, entry.name)
        rel = relative + entry.name
        if walk.excluded(entry.name, rel):  # an excluded directory is not entered
            continue
        if _is_dir(entry):
            if walk.recursive:
                yield from _walk(path, visited, walk, rel + "/")
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            yield path, path, None, None  # a dangling symlink too: reading reports not_found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _list_error(directory: str, exc: OSError) -> ItemError:
    kind = "permission_denied" if isinstance(exc, PermissionError) else "read_error"
    return ItemError(kind, f"cannot list directory {directory!r}: {exc.strerror or exc}")


def _glob(pattern: str) -> Iterator[str]:
    """Files matching ``pattern`` (``*``, ``?``, ``[...]``, ``**`` = any depth), lazily.

    Matches come in the same order as a directory walk. Like the shell, ``*``
    does not match a leading dot and ``**`` does not enter hidden directories.
    Directories matched by the last component are skipped.
    """
    root = os.sep if pattern.startswith(os.sep) else ""
    parts = [p for p in pattern.split(os.sep) if p]
    # "a/**/**/b" means "a/**/b"; collapsing avoids yielding a file twice.
    parts = [p for i, p in enumerate(parts) if not (p == "**" and i and parts[i - 1] == "**")]
    yield from _glob_in(root, parts, set())


_Visited = set[tuple[int, int, int]]  # (st_dev, st_ino, parts left): each expanded once


def _glob_in(directory: str, parts: list[str], visited: _Visited) -> Iterator[str]:
    if parts[0] == "**":
        key = _dir_key(directory)
        if key is None or (*key, len(parts)) in visited:  # a symlink loop, or reached twice
            return
        visited.add((*key, len(parts)))
    elif not _MAGIC.search(parts[0]):  # a literal component: no listing needed
        path = os.path.join(directory, parts[0])
        if os.path.lexists(path):
            yield from _glob_entry(parts[0], path, os.path.isdir(path), parts, visited)
        return
    try:
        entries = _listdir(directory)
    except OSError:  # like the shell: an unreadable directory matches nothing
        return
    for entry in entries:
        path = os.path.join(directory, entry.name)
        yield from _glob_entry(entry.name, path, _is_dir(entry), parts, visited)


def _glob_entry(name: str, path: str, is_dir: bool, parts: list[str], visited: _Visited) -> Iterator[str]:
    """Matches of ``parts`` that start with this directory entry."""
    part, rest = parts[0], parts[1:]
    if part == "**":
        if rest:  # "**" as zero directories
            yield from _glob_entry(name, path, is_dir, rest, visited)
        elif not is_dir and not name.startswith("."):
            yield path
        if is_dir and not name.startswith("."):  # "**" as one or more directories
            yield from _glob_in(path, parts, visited)
    elif (name.startswith(".") and not part.startswith(".")) or not fnmatchcase(name, part):
        return
    elif rest:
        if is_dir:
            yield from _glob_in(path, rest, visited)
    elif not is_dir:
        yield path


class WalkedAhead(Iterator[Item]):
    """``items`` in the same order, walked ahead of their consumer by a thread, so their number is known early.

    Directories are listed and stdin or a URL list read up to ``limit`` items
    ahead; :attr:`total` is the number of items once the walk has reached the
    end (None before), which for most runs is long before captioning does. An
    error the walk raises reaches the consumer after the items before it.
    :meth:`close` stops the walk.
    """

    def __init__(self, items: Iterable[Item], limit: int = LOOKAHEAD) -> None:
        self.total: int | None = None
        self._ahead: deque[Item] = deque()
        self._limit = limit
        self._error: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._walk, args=(iter(items),), name="capcli-walk", daemon=True).start()

    def _walk(self, items: Iterator[Item]) -> None:
        count = 0
        try:
            for item in items:
                with self._changed:
                    while len(self._ahead) >= self._limit and not self._closed:
                        self._changed.wait()
                    if self._closed:
                        return
                    self._ahead.append(item)
                    self._changed.notify_all()
                count += 1
        except BaseException as exc:  # handed over: the consumer raises it where the walk stopped
            with self._changed:
                self._error = exc
                self._changed.notify_all()
            return
        with self._changed:
            self.total = count
            self._changed.notify_all()

    def __next__(self) -> Item:
        with self._changed:
            while not self._ahead and self.total is None and self._error is None and not self._closed:
                self._changed.wait()
            if self._ahead:
                self._changed.notify_all()  # room for the walk again
                return self._ahead.popleft()
            if self._error is not None:
                raise self._error
            raise StopIteration

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._ahead.clear()
            self._changed.notify_all()
