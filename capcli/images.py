"""Image file or bytes -> RGB -> float32 array ``(3, H, W)`` per a bundle's preprocessing (or its uint8 pixels).

Every failure raises :class:`~capcli.errors.ItemError` with one of the kinds in
:data:`ERROR_KINDS`; nothing else escapes. Global Pillow state
(``LOAD_TRUNCATED_IMAGES``, ``MAX_IMAGE_PIXELS``, warning filters) is never
touched, so capcli can be imported into other programs safely.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capcli.errors import BundleError, ItemError

if TYPE_CHECKING:
    from capcli.bundle import Preprocess

# Pillow's own decompression-bomb threshold. Image.open refuses images over twice
# its MAX_IMAGE_PIXELS; a larger --max-pixels opens them through the format
# plugins directly (see _open), so capcli's limit is the one that counts.
DEFAULT_MAX_PIXELS = 89_478_485

ERROR_KINDS = {
    "not_found": "the file does not exist (or is a dangling link); a glob matched nothing",
    "permission_denied": "the file or directory cannot be read by this user",
    "not_a_file": "the path is a device, FIFO or socket, not a regular file",
    "read_error": "any other operating-system error while reading",
    "empty_file": "the file or download has 0 bytes",
    "not_an_image": "the content is not an image format Pillow knows",
    "unsupported_format": "a known image format this installation cannot decode (e.g. HEIC without the heic extra)",
    "too_large": "width x height is over --max-pixels or Pillow's decompression-bomb limit",
    "truncated": "the image data ends early",
    "decode_error": "the image is corrupt or cannot be converted to RGB",
}

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


@dataclass(frozen=True)
class Loaded:
    array: np.ndarray  # (3, H, W) float32, normalised; with pixels=True the resized (H, W, 3) uint8 pixels
    n_frames: int  # > 1 for animations and multi-page files; only the first frame is used
    thumbnail: np.ndarray | None = None  # (h, w, 3) uint8 upright RGB copy, only when asked for


def load(
    source: str | bytes,
    pre: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnail: int | None = None,
    pixels: bool = False,
) -> Loaded:
    """Read a path or encoded bytes and preprocess it for the model.

    ``thumbnail``: also keep a copy of the photo whose longest side is at most
    this many pixels (for attention figures: URLs cannot be read twice).
    ``pixels``: stop at the resized uint8 pixels (see :func:`to_array`).
    """
    image, n_frames = open_rgb(source, max_pixels=max_pixels, draft_to=max(*pre.size, thumbnail or 0))
    return Loaded(to_array(image, pre, pixels), n_frames, _thumbnail(image, thumbnail))


def load_picture(
    picture: Image.Image | np.ndarray,
    pre: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnail: int | None = None,
    pixels: bool = False,
) -> Loaded:
    """Preprocess an image already in memory: a PIL image, or an array ``(H, W)``, ``(H, W, 3)``
    or ``(H, W, 4)`` (uint8, or float in 0..1), like :func:`load` does a file's."""
    if isinstance(picture, np.ndarray):
        array = picture
        if array.dtype.kind == "f":
            array = np.rint(np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0).astype(np.uint8)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ItemError("decode_error", f"an image array is (H, W), (H, W, 3) or (H, W, 4), not {array.shape}")
        image = Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    elif isinstance(picture, Image.Image):
        image = picture
    else:
        raise ItemError("not_an_image", f"not an image: a {type(picture).__name__}")
    if image.width * image.height > max_pixels:
        raise ItemError("too_large", f"{image.width}x{image.height} pixels is over the limit of {max_pixels:,}")
    n_frames = _n_frames(image)
    try:
        rgb = _to_rgb(image)
    except Exception as exc:  # Pillow raises many types for modes it cannot convert
        raise ItemError("decode_error", f"cannot convert a {image.mode} image to RGB: {exc}") from None
    return Loaded(to_array(rgb, pre, pixels), n_frames, _thumbnail(rgb, thumbnail))


def _thumbnail(image: Image.Image, size: int | None) -> np.ndarray | None:
    """A (h, w, 3) uint8 copy whose longest side is at most ``size`` pixels; None without a size."""
    if not size:
        return None
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(copy, dtype=np.uint8)  # (h, w, 3)


def open_rgb(
    source: str | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_to: int | None = None
) -> tuple[Image.Image, int]:
    """The first frame as an upright RGB image, and the number of frames.

    ``draft_to``: let a JPEG decode at a reduced scale (1/2, 1/4, 1/8) as long
    as both sides stay at least this many pixels: big photos decode much faster.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ItemError("empty_file", "no data")
        return _decode(io.BytesIO(source), max_pixels, draft_to)
    with _open_file(source) as fp:
        return _decode(fp, max_pixels, draft_to)


def to_array(image: Image.Image, pre: Preprocess, pixels: bool = False) -> np.ndarray:
    """RGB image -> resized, normalised float32 ``(3, H, W)``; with ``pixels``, the resized uint8
    ``(H, W, 3)`` pixels, for an encoder that normalises them itself (:mod:`capcli.pixel_input`)."""
    if pre.resize != "squash":
        raise BundleError(f"unsupported resize rule {pre.resize!r} (capcli knows 'squash')")
    if pre.interpolation not in _RESAMPLE:
        raise BundleError(f"unsupported interpolation {pre.interpolation!r}")
    height, width = pre.size
    image = image.resize((width, height), _RESAMPLE[pre.interpolation])
    rgb = np.asarray(image)  # (H, W, 3) uint8
    return rgb if pixels else normalise(rgb, pre)


def normalise(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 pixels ``(..., H, W, 3)`` -> the model's float32 input ``(..., 3, H, W)``."""
    # (x/255 - mean) / std as one multiply-add per channel written straight into CHW:
    # several times cheaper than float conversion, two broadcasts and a transposed copy.
    out = np.empty((*pixels.shape[:-3], 3, *pixels.shape[-3:-1]), dtype=np.float32)
    for c, (scale, offset) in enumerate(zip(*channel_constants(pre))):
        np.multiply(pixels[..., c], scale, out=out[..., c, :, :])
        out[..., c, :, :] += offset
    return out


def channel_constants(pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each (3,) float32: a normalised value is ``pixel * scale + offset``, computed in
    float32 as one multiply, then one add (the pixel-input encoder repeats exactly this)."""
    scale = np.array([1.0 / (255.0 * s) for s in pre.std], dtype=np.float32)
    offset = np.array([-m / s for m, s in zip(pre.mean, pre.std)], dtype=np.float32)
    return scale, offset


def _open_file(path: str) -> IO[bytes]:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # checked first: opening a FIFO would block
            raise ItemError("not_a_file", f"not a regular file: {path!r}")
        if st.st_size == 0:
            raise ItemError("empty_file", "the file has 0 bytes")
        return open(path, "rb")
    except FileNotFoundError:
        raise ItemError("not_found", f"no such file: {path!r}") from None
    except PermissionError:
        raise ItemError("permission_denied", f"permission denied: {path!r}") from None
    except OSError as exc:
        raise ItemError("read_error", f"cannot read {path!r}: {exc.strerror or exc}") from None


def _decode(fp: IO[bytes], max_pixels: int, draft_to: int | None) -> tuple[Image.Image, int]:
    try:
        with _identify(fp, max_pixels) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ItemError("too_large", f"{width}x{height} is over the limit of {max_pixels} pixels")
            if draft_to and image.format == "JPEG":
                image.draft(None, (draft_to, draft_to))  # a square request: safe under any rotation
            image.load()
            _upright(image)
            rgb = _to_rgb(image)  # always a new image: the file's own one is closed with ``fp``
            return rgb, _n_frames(image)
    except ItemError:
        raise
    except Image.DecompressionBombError as exc:  # TIFF and WebP check Pillow's limit themselves too
        raise ItemError(
            "too_large", f"{exc} (Pillow's own limit, which --max-pixels cannot raise for this format)"
        ) from None
    except MemoryError:
        raise ItemError("too_large", "not enough memory to decode this image") from None
    except OSError as exc:
        # Pillow says "image file is truncated" (pixel data) or "Truncated File Read" (headers).
        kind = "truncated" if "truncated" in str(exc).lower() else "decode_error"
        raise ItemError(kind, str(exc)) from None
    except Exception as exc:  # Pillow signals corrupt data with many exception types
        raise ItemError("decode_error", f"{type(exc).__name__}: {exc}") from None


def _identify(fp: IO[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    head = fp.read(32)
    fp.seek(0)
    try:
        return _open(fp, max_pixels)
    except UnidentifiedImageError:
        pass
    fmt = _sniff(head)
    if fmt == "HEIF" and _register_heif():
        fp.seek(0)
        return _open(fp, max_pixels)
    if fmt:
        hint = " (pip install 'capcli[heic]')" if fmt == "HEIF" else ""
        raise ItemError("unsupported_format", f"{fmt} images are not supported by this installation{hint}")
    raise ItemError("not_an_image", "not an image format Pillow recognises")


def _open(fp: IO[bytes], max_pixels: int) -> Image.Image:
    """``Image.open``, unless ``max_pixels`` allows more than Pillow's bomb limit, which Image.open enforces.

    Then the format plugins are asked directly, as Image.open asks them, without its size check (the
    caller checks the size against ``max_pixels``); Pillow's global limit is left as it is.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if not limit or max_pixels <= 2 * limit:
        return Image.open(fp)
    prefix = fp.read(16)
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            result = accept(prefix) if accept else True
            if isinstance(result, str) or not result:  # a str: "this format, but unsupported here"
                continue
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format: the next one, as Image.open does
    raise UnidentifiedImageError("cannot identify image file")


def _sniff(head: bytes) -> str | None:
    """Name image formats that Pillow may lack a decoder for."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIF"
        if brand in _AVIF_BRANDS:
            return "AVIF"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    if head.lstrip().startswith((b"<svg", b"<?xml")):
        return "SVG"
    return None


@functools.cache
def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF through the optional pillow-heif package, once."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _upright(image: Image.Image) -> None:
    """Turn ``image`` upright per its EXIF orientation, in place: no copy of upright photos."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # corrupt EXIF: the pixels stay as stored (or turned, when only rewriting the tag failed)
        pass


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit: scale the full 0..65535 range (Pillow's convert would clip at 255 -> white).
        x = np.asarray(image, dtype=np.float32) / 257.0
        return Image.fromarray(np.rint(x).astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_stretch(np.asarray(image, dtype=np.float64))).convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in image.info:
        # Transparent areas become white, not whatever colour hides under alpha 0.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _stretch(x: np.ndarray) -> np.ndarray:
    """32-bit int/float pixels have no fixed range: map their own min..max to 0..255."""
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        x = (x - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(x, 0, 255)).astype(np.uint8)


def _n_frames(image: Image.Image) -> int:
    try:
        return int(getattr(image, "n_frames", 1))
    except Exception:  # counting frames reads the whole file; a broken later frame is not our concern
        return 1
