"""Attention figures in the style of "Show, Attend and Tell", drawn with Pillow and numpy only.

A figure is a grid of panels, at most :data:`COLUMNS` a row: the photo, then
for every word of the caption the photo under a heat map of the attention
weights that produced that word (the decoder's ``alpha`` over the encoder
grid, upsampled bicubically, scaled to 0..1 per word, coloured and blended),
with the word written underneath.  The caption path must not depend on
matplotlib or torch, hence the small colour map below.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from capcli.atomic import replacing
from capcli.errors import FatalError
from capcli.sources import Item

PANEL = 224  # longest side of a panel, in pixels
COLUMNS = 5  # panels per row
GAP = 6  # pixels around and between panels
LABEL = 24  # height of the word strip under each panel
OPACITY = 0.6  # weight of the heat map over the photo
BACKGROUND = (255, 255, 255)
STEM_CHARS = 60  # longest name part taken from the source

# "inferno"-like: dark where the model did not look, bright yellow where it did.
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
)  # (256, 3)
_URL = re.compile(r"https?://", re.IGNORECASE)


def panel_size(photo_size: tuple[int, int], panel: int = PANEL) -> tuple[int, int]:
    """(width, height) of one panel: the photo scaled so that its longest side is ``panel``."""
    width, height = photo_size
    scale = panel / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def figure_size(n_words: int, photo_size: tuple[int, int], panel: int = PANEL) -> tuple[int, int]:
    """(width, height) of the figure for a caption of ``n_words`` words: 1 + n_words panels."""
    pw, ph = panel_size(photo_size, panel)
    n = n_words + 1
    columns = min(n, COLUMNS)
    rows = math.ceil(n / columns)
    return GAP + columns * (pw + GAP), GAP + rows * (ph + LABEL + GAP)


def render(photo: np.ndarray, words: list[str], alphas: np.ndarray, panel: int = PANEL) -> Image.Image:
    """The figure for a photo (h, w, 3) uint8, its caption's words and their weights (T, gh, gw)."""
    if alphas.ndim != 3 or len(alphas) != len(words):
        raise ValueError(f"need one (gh, gw) map per word: {len(words)} words, alphas {alphas.shape}")
    image = Image.fromarray(np.ascontiguousarray(photo, dtype=np.uint8)).convert("RGB")
    pw, ph = panel_size(image.size, panel)
    base = np.asarray(image.resize((pw, ph), Image.Resampling.BICUBIC), dtype=np.float64)  # (ph, pw, 3)
    figure = Image.new("RGB", figure_size(len(words), image.size, panel), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    font = _font()
    panels = [(base, "")] + [(_overlay(base, alpha), word) for alpha, word in zip(alphas, words)]
    columns = min(len(panels), COLUMNS)
    for i, (pixels, label) in enumerate(panels):
        x = GAP + (i % columns) * (pw + GAP)
        y = GAP + (i // columns) * (ph + LABEL + GAP)
        figure.paste(Image.fromarray(np.rint(pixels).astype(np.uint8)), (x, y))
        text = _fit(label, font, pw)
        draw.text((x + pw / 2, y + ph + LABEL / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    return figure


def heat(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Attention weights (gh, gw) -> a smooth map (h, w) in 0..1 for an image of ``size`` (w, h)."""
    up = Image.fromarray(np.asarray(alpha, dtype=np.float32)).resize(size, Image.Resampling.BICUBIC)
    x = np.asarray(up, dtype=np.float64)  # (h, w)
    low, high = float(x.min()), float(x.max())
    if high - low < 1e-12:  # flat: nothing stands out
        return np.zeros_like(x)
    return (x - low) / (high - low)


def _overlay(base: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    h, w = base.shape[:2]
    colours = _LUT[np.rint(heat(alpha, (w, h)) * 255).astype(np.intp)]  # (h, w, 3)
    return (1 - OPACITY) * base + OPACITY * colours


def _font() -> Any:
    return ImageFont.load_default(size=LABEL * 2 // 3)


def _fit(text: str, font: Any, width: int) -> str:
    """``text``, cut with "..." so that it fits in ``width`` pixels."""
    if font.getlength(text) <= width - 4:
        return text
    while text and font.getlength(text + "...") > width - 4:
        text = text[:-1]
    return text + "..."


def figure_name(index: int, source: str, suffix: str = ".png") -> str:
    """A safe, unique file name for an input's figure: ``000042-dog_on_beach.png`` (or another ``suffix``).

    Only ASCII letters, digits, ``.``, ``_`` and ``-`` from the source's last
    path segment (a URL's path, unquoted) survive, without leading dots, so no
    name can leave the directory or hide; the input index keeps names unique.
    """
    if _URL.match(source):
        name = unquote(urlsplit(source).path.rstrip("/").rpartition("/")[2], errors="replace")
    else:
        name = os.path.basename(source.rstrip("/" + os.sep))
    stem, dot, _ = name.rpartition(".")
    if dot and stem:
        name = stem
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._-")[:STEM_CHARS].strip("._-")
    return f"{index:06d}-{safe or 'image'}{suffix}"


class AttentionFigures:
    """Writes one figure per captioned item into ``directory``; plugs into the pipeline as ``annotate``."""

    def __init__(self, directory: str, panel: int = PANEL) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise FatalError(f"cannot create --attention-dir {directory}: {exc.strerror or exc}") from None
        self.directory = directory
        self.panel = panel

    @property
    def thumbnail(self) -> int:
        """Longest side of the photo copy the reader must keep for each item."""
        return self.panel

    def annotate(self, item: Item, caption: Any, loaded: Any) -> dict[str, str]:
        """Draw ``caption``'s figure from ``loaded.thumbnail``; the record's extra field."""
        if caption.alphas is None or loaded.thumbnail is None:
            raise FatalError("attention figures need the attention weights and a copy of each photo")
        path = os.path.join(self.directory, figure_name(item.index, item.source))
        figure = render(loaded.thumbnail, caption.tokens, caption.alphas, self.panel)
        _save(figure, path)
        return {"attention": path}


def _save(figure: Image.Image, path: str) -> None:
    """PNG through a hidden temporary file beside it, so an interrupted run leaves no half figure.

    (Not mkstemp: its 0600 mode would stay on the figure.)
    """
    try:
        with replacing(path) as tmp:
            figure.save(tmp, format="PNG")
    except OSError as exc:
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}") from None
