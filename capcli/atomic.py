"""Writes that are never seen half-done: a temporary file beside the target, then ``os.replace``.

Checkpoints, feature caches, figures, review pages and JSON reports all go
through :func:`replacing`: an interrupted or failed write leaves the old file
(or none), never a truncated one. Model bundles (directories) are written in
:func:`temp_dir_beside` and swapped in by :func:`move_into_place` (export and the
model store); a resumed output file is rewritten by
:class:`capcli.writers.ResumeWriter` the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """A hidden temporary name in ``path``'s folder (so ``os.replace`` is atomic), unique per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends normally it replaces ``path``.

    On an error (or Ctrl-C) the temporary file is removed and ``path`` is untouched. The file
    gets the usual permissions of a new file (not ``mkstemp``'s 0600).
    """
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a UTF-8 text file all at once."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def temp_dir_beside(target: Path) -> Iterator[Path]:
    """Yield a new hidden directory beside ``target`` (same file system, so a rename is atomic); removed after."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the bundle's mode
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished directory onto ``target``; an old one is renamed aside first, then removed."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old)  # onto an empty directory: allowed
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
