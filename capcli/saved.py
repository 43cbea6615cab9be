"""``url-list --save-images DIR``: each downloaded image's bytes, as the server sent them, under a safe name.

Names come from :func:`capcli.attention.figure_name` (the input's index and the
URL's last path segment, ASCII letters, digits, ``.``, ``_`` and ``-`` only),
with a suffix for the format the bytes really hold: ``DIR/000012-cat.jpg``.
Only images that decoded are kept, and each is written atomically.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

from capcli.atomic import replacing
from capcli.attention import figure_name
from capcli.errors import FatalError
from capcli.sources import Item

# Pillow format -> suffix, where the format's lower-case name is not the usual suffix.
_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif", "JPEG2000": ".jp2", "HEIF": ".heic"}


def image_suffix(data: bytes) -> str:
    """The usual file suffix of the image format ``data`` holds (``.img`` when Pillow cannot tell)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except Exception:  # e.g. a bomb over Pillow's own limit that --max-pixels allows
        fmt = None
    return _SUFFIXES.get(fmt, f".{fmt.lower()}") if fmt else ".img"


class SavedImages:
    """Writes downloads into ``directory`` (``keep``, from the reader threads) and names them in their
    records (``annotate``, from the main thread)."""

    def __init__(self, directory: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise FatalError(f"cannot create --save-images {directory}: {exc.strerror or exc}") from None
        self.directory = directory
        self._paths: dict[int, str] = {}  # input index -> saved path, until its record takes it

    def keep(self, item: Item, data: bytes) -> None:
        path = os.path.join(self.directory, figure_name(item.index, item.source, image_suffix(data)))
        try:
            with replacing(path) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise FatalError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._paths[item.index] = path  # one key per item: safe across threads under the GIL

    def annotate(self, item: Item, caption: Any, loaded: Any) -> dict[str, str]:
        """The record's ``saved`` field."""
        return {"saved": self._paths.pop(item.index)}
