"""Image loading: every file a photo folder may hold gives an RGB array or one ItemError."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from capcli import images
from capcli.bundle import Preprocess
from capcli.errors import ItemError
from capcli.images import load, open_rgb, to_array

PRE = Preprocess(size=(16, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash", interpolation="bilinear")
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def kind_of(source, **options) -> str:
    with pytest.raises(ItemError) as info:
        open_rgb(source, **options)
    return info.value.kind


def pixel(source, xy=(0, 0)) -> tuple[int, ...]:
    rgb, _ = open_rgb(source)
    assert rgb.mode == "RGB"
    return rgb.getpixel(xy)


def halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


# --- files that are not images -------------------------------------------------------------


def test_file_system_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.jpg")
    assert kind_of(str(tmp_path / "missing.jpg")) == "not_found"
    assert kind_of(str(tmp_path / "empty.jpg")) == "empty_file"
    assert kind_of(b"") == "empty_file"
    assert kind_of(str(tmp_path)) == "not_a_file"
    assert kind_of(str(tmp_path / "fifo.jpg")) == "not_a_file"  # and does not block

    (tmp_path / "secret.jpg").write_bytes(b"x")

    def refuse(*args, **kwargs):  # chmod 0 does not stop root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)
    assert kind_of(str(tmp_path / "secret.jpg")) == "permission_denied"


def test_non_image_content_and_unsupported_formats() -> None:
    assert kind_of(b"just some text, named photo.jpg") == "not_an_image"
    assert kind_of(b"<svg xmlns='http://www.w3.org/2000/svg'/>") == "unsupported_format"
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\0" * 16
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        with pytest.raises(ItemError, match="heic") as info:
            open_rgb(heic)
        assert info.value.kind == "unsupported_format"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = encode(noise, fmt)
    assert kind_of(data[: len(data) // 2]) == "truncated"  # in the pixel data
    assert kind_of(data[:100]) == "truncated"  # in the headers


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size (what a decompression bomb looks like)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_max_pixels_above_pillows_own_limit_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-pixels is the limit, even above Pillow's (here made small so that a real image exceeds it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Image.open refuses over 2,000 pixels
    photo = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        rgb, _ = open_rgb(encode(Image.fromarray(photo), fmt), max_pixels=10_000)  # 4,800 pixels
        assert rgb.size == (80, 60), fmt
    for fmt in ("TIFF", "WEBP"):  # their plugins check Pillow's limit themselves: refused, and said so
        with pytest.raises(ItemError, match="Pillow's own limit") as info:
            open_rgb(encode(Image.fromarray(photo), fmt), max_pixels=10_000)
        assert info.value.kind == "too_large"
    with pytest.raises(ItemError) as info:  # capcli's own limit still holds
        open_rgb(encode(Image.fromarray(photo), "PNG"), max_pixels=4_000)
    assert info.value.kind == "too_large" and "4000" in str(info.value)
    assert kind_of(b"not an image at all", max_pixels=10_000) == "not_an_image"
    assert Image.MAX_IMAGE_PIXELS == 1_000  # Pillow's setting was left alone


def test_pixel_limits_are_checked_from_the_header() -> None:
    assert kind_of(png_claiming(200_000, 200_000)) == "too_large"  # Pillow's own bomb limit
    with pytest.raises(ItemError) as info:
        open_rgb(png_claiming(100, 100), max_pixels=5_000)
    assert info.value.kind == "too_large" and "5000" in str(info.value)
    rgb, _ = open_rgb(encode(Image.new("RGB", (50, 100)), "PNG"), max_pixels=5_000)
    assert rgb.size == (50, 100)


# --- orientation, modes, frames, sizes -------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "size", "top_left"),
    [(1, (40, 20), RED), (3, (40, 20), BLUE), (6, (20, 40), RED), (8, (20, 40), BLUE)],
)
def test_exif_orientation_is_applied(orientation: int, size, top_left) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb, _ = open_rgb(encode(halves(), "PNG", exif=exif.tobytes()))
    assert rgb.size == size
    assert rgb.getpixel((0, 0)) == top_left
    # Orientation 6 turns the picture clockwise: the stored left half ends on top.
    assert rgb.getpixel((size[0] - 1, size[1] - 1)) == (BLUE if top_left == RED else RED)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data": expected here
def test_corrupt_exif_is_tolerated() -> None:
    jpeg = encode(halves(), "JPEG", quality=95)
    junk = b"Exif\0\0MM\0\x2a\xff\xff\xff\xf0" + b"\x13" * 40  # IFD offset far past the end
    segment = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
    rgb, _ = open_rgb(jpeg[:2] + segment + jpeg[2:])
    assert rgb.size == (40, 20)
    assert rgb.getpixel((2, 2))[0] > 200  # still red: pixels kept as stored


def test_modes_with_transparency_composite_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # red hidden under alpha 0
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    assert pixel(encode(rgba, "PNG")) == WHITE
    assert pixel(encode(rgba, "PNG"), (1, 1)) == BLUE
    assert pixel(encode(Image.new("LA", (4, 4), (0, 0)), "PNG")) == WHITE

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 0)
    data = encode(pal, "PNG", transparency=1)  # palette index 1 (black) is transparent
    assert pixel(data) == WHITE and pixel(data, (1, 1)) == RED
    assert pixel(encode(pal, "PNG"), (0, 0)) == (0, 0, 0)  # no transparency: plain palette
    gif = encode(pal, "GIF", transparency=1)
    assert pixel(gif) == WHITE


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("1", (4, 4), 1), "PNG", WHITE),
        (Image.new("L", (4, 4), 77), "PNG", (77, 77, 77)),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "TIFF", WHITE),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", RED),
    ],
    ids=["1", "L", "CMYK-tiff", "CMYK-jpeg"],
)
def test_plain_modes(image: Image.Image, fmt: str, expected) -> None:
    got = pixel(encode(image, fmt))
    assert np.allclose(got, expected, atol=6), got


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    x = np.full((4, 8), 30000, np.uint16)
    x[:, 4:] = 65535
    data = encode(Image.fromarray(x), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    assert pixel(data) == (117, 117, 117)  # 30000 / 257, not white
    assert pixel(data, (7, 0)) == WHITE


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_int_and_float_are_stretched_to_their_range(mode: str) -> None:
    x = np.linspace(-1000.0, 1_000_000.0, 64).reshape(8, 8)
    image = Image.fromarray(x.astype(np.int32 if mode == "I" else np.float32))
    assert image.mode == mode
    data = encode(image, "TIFF")
    assert pixel(data) == (0, 0, 0) and pixel(data, (7, 7)) == WHITE
    assert 0 < pixel(data, (4, 4))[0] < 255


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_uses_the_first_frame_and_counts_frames(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, (0, 255, 0))]
    data = encode(
        frames[0],
        fmt,
        save_all=True,
        append_images=frames[1:],
        duration=100,
        **({"lossless": True} if fmt == "WEBP" else {}),
    )
    rgb, n_frames = open_rgb(data)
    assert n_frames == 3
    assert np.allclose(rgb.getpixel((4, 4)), RED, atol=8)


@pytest.mark.parametrize("size", [(1, 1), (1, 10_000), (10_000, 1)])
def test_degenerate_sizes(size) -> None:
    loaded = load(encode(Image.new("RGB", size, RED), "PNG"), PRE)
    assert loaded.array.shape == (3, 16, 24) and loaded.n_frames == 1
    assert np.allclose(loaded.array[:, 5, 5], [1.0, -1.0, -1.0])  # red after (x-.5)/.5


def test_big_jpegs_decode_at_reduced_scale_but_not_below_the_target() -> None:
    data = encode(halves(2000, 1600), "JPEG")
    assert open_rgb(data)[0].size == (2000, 1600)
    small, _ = open_rgb(data, draft_to=224)
    assert small.size == (500, 400)  # 1/4 scale: 1/8 would go below 224 px
    assert small.getpixel((10, 10))[0] > 200 and small.getpixel((490, 10))[2] > 200


def test_to_array_layout_and_normalisation() -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 255))
    pre = Preprocess(size=(5, 7), mean=(0.5, 0.0, 0.25), std=(0.5, 1.0, 0.25), resize="squash", interpolation="bicubic")
    x = to_array(image, pre)
    assert x.dtype == np.float32 and x.shape == (3, 5, 7) and x.flags.c_contiguous
    assert np.allclose(x[:, 2, 3], [1.0, 0.0, 3.0])


def test_real_photo(photos: Path) -> None:
    path = sorted(photos.iterdir())[0]
    loaded = load(str(path), PRE)
    assert loaded.array.shape == (3, 16, 24) and np.isfinite(loaded.array).all()
    assert -1.0 <= loaded.array.min() < loaded.array.max() <= 1.0


def test_global_pillow_state_is_left_alone() -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    for data in (png_claiming(200_000, 200_000), b"junk", encode(halves(), "PNG")[:60]):
        with pytest.raises(ItemError):
            open_rgb(data)
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before


# --- fuzzing: whatever the bytes, only ItemError escapes ----------------------------------------

SEEDS = [encode(halves(16, 12), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")]


def survives(data: bytes) -> None:
    try:
        rgb, _ = open_rgb(data, max_pixels=1_000_000)
    except ItemError as exc:
        assert exc.kind in images.ERROR_KINDS
    else:
        assert rgb.mode == "RGB"


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    survives(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=8),
    st.integers(0, 10**6),
)
def test_fuzz_bit_flips_and_cuts(seed: bytes, flips, cut: int) -> None:
    data = bytearray(seed)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    survives(bytes(data[: max(1, cut % (len(data) + 1))]))
