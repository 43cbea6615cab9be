"""Caption sidecar files: ``photo.txt`` beside ``photo.jpg`` (``capcli caption --sidecar .txt``).

The convention of LoRA / fine-tuning data sets (kohya-ss, taggui): the caption
text only, UTF-8, ending in a newline, written atomically so that a training
job never reads half a caption. ``--skip-existing`` drops the images that
already have one before they reach the reader pool, so they are not even
decoded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator

from capcli.atomic import atomic_write_text
from capcli.errors import FatalError, ItemError, UsageError
from capcli.pipeline import Record, Summary
from capcli.sources import IMAGE_SUFFIXES, Item


def check_suffix(suffix: str) -> str:
    """``suffix`` if it can only name a sidecar: ``.txt``, ``.caption``; never a path or an image's suffix."""
    if not suffix.startswith(".") or len(suffix) < 2 or "/" in suffix or os.sep in suffix:
        raise UsageError(f"--sidecar takes a file suffix such as .txt, not {suffix!r}")
    if suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"--sidecar {suffix} would overwrite images")
    return suffix


def sidecar_path(image: str, suffix: str) -> str:
    """``photos/cat.jpg`` -> ``photos/cat.txt``."""
    return os.path.splitext(image)[0] + suffix


class Sidecars:
    """Chooses the items to caption (``select``) and writes each caption's sidecar (``write``)."""

    def __init__(self, suffix: str, *, skip_existing: bool = False) -> None:
        self.suffix = check_suffix(suffix)
        self.skip_existing = skip_existing

    def select(self, items: Iterable[Item], summary: Summary) -> Iterator[Item]:
        """The items to caption: those already holding a sidecar are counted in ``summary.kept`` and dropped
        with ``skip_existing``; an input that cannot have a sidecar becomes an error record."""
        for item in items:
            if item.error is not None:
                yield item
            elif item.path is None:  # a URL read from stdin (URL arguments are refused up front)
                yield dataclasses.replace(item, error=ItemError("unsupported_source", "a URL cannot have a sidecar"))
            elif sidecar_path(item.path, self.suffix) == item.path:
                why = f"its sidecar would be the image itself (it ends in {self.suffix})"
                yield dataclasses.replace(item, error=ItemError("unsupported_source", why))
            elif self.skip_existing and os.path.exists(sidecar_path(item.path, self.suffix)):
                summary.kept += 1
            else:
                yield item

    def write(self, record: Record) -> None:
        """The sidecar of a captioned record (a failed one gets none)."""
        if record["status"] != "ok":
            return
        path = sidecar_path(record["source"], self.suffix)
        try:
            atomic_write_text(path, record["caption"] + "\n")
        except OSError as exc:
            raise FatalError(f"cannot write {path}: {exc.strerror or exc}") from None
