"""Attention figures (issue 7): weights from the runtime, figure layout, safe names, CLI, a model that looks."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from httpserver import LocalServer
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from capcli import images
from capcli.attention import COLUMNS, GAP, LABEL, STEM_CHARS, figure_name, figure_size, heat, render
from capcli.bundle import Preprocess
from capcli.cli import main

# --- weights from the runtime ------------------------------------------------------------


@pytest.fixture(scope="module")
def captioner(tiny_bundle: Path):
    from capcli.bundle import load_bundle
    from capcli.runtime import Captioner

    return Captioner(load_bundle(str(tiny_bundle)), device="cpu", beam=3)


def noise_images(n: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3, 64, 64)).astype(np.float32)  # (B, 3, H, W)


def test_each_word_has_a_grid_of_weights_summing_to_one(captioner) -> None:
    gh, gw = captioner.bundle.grid
    for caption in captioner.caption(noise_images(4)):
        assert caption.alphas.shape == (len(caption.tokens), gh, gw)
        assert np.all(caption.alphas >= 0)
        np.testing.assert_allclose(caption.alphas.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_beam_weights_are_those_of_the_chosen_hypothesis_steps(captioner) -> None:
    """Replaying the chosen words through the ONNX step gives back exactly the caption's weights."""
    vocab = captioner.bundle.vocab
    batch = noise_images(4)
    for image, caption in zip(batch, captioner.caption(batch)):
        encoded = captioner.encode(image[None])
        state = {name: encoded[name] for name in captioner.bundle.state_names}
        context = captioner.bind_context(encoded)
        replayed = []
        for token in [vocab.start_id, *vocab.encode(caption.tokens)[:-1]]:  # the word before each word
            _, state, alpha = captioner.step(np.array([token]), state, context)  # alpha (1, L)
            replayed.append(alpha[0])
        np.testing.assert_allclose(np.stack(replayed).reshape(caption.alphas.shape), caption.alphas, atol=1e-6)


# --- the figure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_words", "photo", "expected"),
    [
        # panels of 224x168 (a 4:3 photo); 1 + n_words panels, 5 a row; each row 168 + 24 label + 6 gap
        (3, (64, 48), (6 + 4 * (224 + 6), 6 + 1 * (168 + 24 + 6))),
        (4, (640, 480), (6 + 5 * (224 + 6), 6 + 1 * (168 + 24 + 6))),
        (7, (64, 48), (6 + 5 * (224 + 6), 6 + 2 * (168 + 24 + 6))),
        (14, (48, 64), (6 + 5 * (168 + 6), 6 + 3 * (224 + 24 + 6))),  # portrait: 168x224 panels
    ],
)
def test_figure_size_follows_the_panel_layout(n_words: int, photo: tuple[int, int], expected: tuple[int, int]) -> None:
    assert (COLUMNS, GAP, LABEL) == (5, 6, 24)  # the constants the expected sizes are written with
    assert figure_size(n_words, photo) == expected
    words = [f"w{i}" for i in range(n_words)]
    alphas = np.full((n_words, 7, 7), 1 / 49)
    figure = render(np.zeros((photo[1], photo[0], 3), np.uint8), words, alphas)
    assert figure.size == expected


def test_heat_sits_where_the_weights_are() -> None:
    alpha = np.full((4, 4), 0.01)
    alpha[3, 0] = 0.85  # bottom-left cell
    h = heat(alpha, (200, 100))  # (h, w) = (100, 200)
    assert h.shape == (100, 200) and h.min() == 0.0 and h.max() == 1.0
    y, x = np.unravel_index(h.argmax(), h.shape)
    assert y >= 75 and x < 50
    assert not heat(np.full((4, 4), 1 / 16), (8, 8)).any()  # flat weights: no spot


def test_rendered_panels_show_the_photo_then_each_word_heat() -> None:
    photo = np.full((64, 64, 3), 128, np.uint8)
    alphas = np.full((2, 4, 4), 0.01)
    alphas[0, 0, 0] = alphas[1, 3, 3] = 0.85  # word 1 looks top left, word 2 bottom right
    pixels = np.asarray(render(photo, ["sky", "grass"], alphas), dtype=np.int32)
    panels = [pixels[GAP : GAP + 224, GAP + i * 230 : GAP + i * 230 + 224] for i in range(3)]
    assert np.all(panels[0] == 128)
    for panel, (hot, cold) in zip(panels[1:], [((0, 0), (3, 3)), ((3, 3), (0, 0))]):

        def mean(cell: tuple[int, int]) -> float:
            return float(panel[cell[0] * 56 : cell[0] * 56 + 56, cell[1] * 56 : cell[1] * 56 + 56].mean())

        assert mean(hot) > mean(cold) + 60
    label = pixels[GAP + 224 : GAP + 224 + LABEL, GAP + 230 : GAP + 230 + 224]
    assert (label < 100).any() and (label == 255).any()  # dark text on white


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("photos/dog.jpg", "000007-dog.png"),
        ("../../etc/passwd", "000007-passwd.png"),
        ("/abs/dir/", "000007-dir.png"),
        (".hidden", "000007-hidden.png"),
        ("..", "000007-image.png"),
        ("https://example.com/a/..%2F..%2Fetc%2Fpasswd.jpg?x=../y#z", "000007-etc_passwd.png"),
        ("https://example.com", "000007-image.png"),
        ("https://example.com/img/caf%C3%A9%20au%20lait.webp", "000007-cafe_au_lait.png"),
        (os.fsdecode(b"snaps/caf\xe9 \x01\x7f.jpeg"), "000007-caf.png"),
        ("photos/" + "x" * 300 + ".jpg", "000007-" + "x" * STEM_CHARS + ".png"),
        ("C:\\Users\\me\\photo.png", "000007-C_Users_me_photo.png"),
    ],
)
def test_figure_names_are_safe(source: str, name: str) -> None:
    assert figure_name(7, source) == name


@given(st.text(max_size=300), st.integers(min_value=0, max_value=10**9))
def test_no_source_names_a_figure_outside_the_directory(source: str, index: int) -> None:
    name = figure_name(index, source)
    assert name.isascii() and "/" not in name and "\\" not in name and not name.startswith(".")
    assert name.startswith(f"{index:06d}-") and name.endswith(".png")
    assert len(name) <= 6 + len(str(index)) + 1 + STEM_CHARS + 4
    assert os.path.dirname(os.path.normpath(os.path.join("att", name))) == "att"


def test_the_index_keeps_same_named_sources_apart() -> None:
    assert figure_name(0, "a/x.jpg") != figure_name(1, "b/x.jpg")


def test_the_reader_keeps_an_upright_thumbnail_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (600, 200), (10, 200, 30)).save(path)
    pre = Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert images.load(str(path), pre).thumbnail is None
    thumb = images.load(str(path), pre, thumbnail=224).thumbnail
    assert thumb.dtype == np.uint8 and thumb.shape == (75, 224, 3)
    assert tuple(thumb[30, 100]) == (10, 200, 30)


# --- the command ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def test_caption_writes_one_figure_per_captioned_input(tiny_bundle: Path, tmp_path: Path, server) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "b.png").write_bytes(png_bytes((80, 60), (200, 30, 30)))
    (photos / "a b.png").write_bytes(png_bytes((60, 80), (30, 30, 200)))
    (photos / "broken.png").write_bytes(b"not an image")
    server.routes["/x/..%2F..%2Fevil.png"] = lambda h: h.send_body(200, png_bytes((90, 90), (0, 255, 0)), "image/png")
    url = server.url("/x/..%2F..%2Fevil.png")
    att, out = tmp_path / "att", tmp_path / "out.csv"
    result = CliRunner().invoke(
        main,
        [
            "caption",
            str(photos),
            url,
            "--model",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--allow-private-network",
            "--attention-dir",
            str(att),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 3, result.output  # broken.png failed
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["status"]) for r in rows] == [
        (str(photos / "a b.png"), "ok"),
        (str(photos / "b.png"), "ok"),
        (str(photos / "broken.png"), "error"),
        (url, "ok"),
    ]
    assert [r["attention"] for r in rows] == [
        str(att / "000000-a_b.png"),
        str(att / "000001-b.png"),
        "",
        str(att / "000003-evil.png"),
    ]
    assert sorted(os.listdir(att)) == ["000000-a_b.png", "000001-b.png", "000003-evil.png"]
    photo_sizes = [(60, 80), (80, 60), None, (90, 90)]
    for row, size in zip(rows, photo_sizes):
        if size is None:
            continue
        with Image.open(row["attention"]) as figure:
            assert figure.format == "PNG"
            assert figure.size == figure_size(len(row["caption"].split()), size)


def test_url_list_draws_figures_too(tiny_bundle: Path, tmp_path: Path, server) -> None:
    server.routes["/p/photo.jpg"] = lambda h: h.send_body(200, png_bytes((50, 100), (9, 9, 9)), "image/png")
    listing = tmp_path / "urls.csv"
    listing.write_text(f"sku,url\nA1,{server.url('/p/photo.jpg')}\nB2,{server.url('/nothing')}\n")
    att = tmp_path / "att"
    result = CliRunner().invoke(
        main,
        [
            "url-list",
            str(listing),
            "--id-col",
            "sku",
            "--model",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--allow-private-network",
            "--retries",
            "0",
            "--attention-dir",
            str(att),
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 3, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["id"], r["status"], r["attention"]) for r in rows] == [
        ("A1", "ok", str(att / "000000-photo.png")),
        ("B2", "error", ""),
    ]
    with Image.open(rows[0]["attention"]) as figure:
        assert figure.size == figure_size(len(rows[0]["caption"].split()), (50, 100))


def test_the_caption_path_draws_without_torch_or_matplotlib(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes((32, 32), (1, 2, 3)))
    code = (
        "import sys\nfrom capcli.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib'))\n"
        "assert not bad, bad\n"
    )
    args = [
        "caption",
        str(tmp_path / "a.png"),
        "--model",
        str(tiny_bundle),
        "--device",
        "cpu",
        "--attention-dir",
        str(tmp_path / "att"),
        "-o",
        str(tmp_path / "out.jsonl"),
    ]
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, timeout=120)
    assert (tmp_path / "att" / "000000-a.png").is_file()


def test_records_have_no_attention_field_without_the_option(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes((32, 32), (1, 2, 3)))
    result = CliRunner().invoke(
        main, ["caption", str(tmp_path / "a.png"), "--model", str(tiny_bundle), "--device", "cpu", "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert "attention" not in result.stdout.splitlines()[0]


def test_an_unusable_attention_dir_is_fatal(tiny_bundle: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "a.png").write_bytes(png_bytes((32, 32), (1, 2, 3)))
    result = CliRunner().invoke(
        main, ["caption", str(tmp_path / "a.png"), "--model", str(tiny_bundle), "--attention-dir", str(blocker / "att")]
    )
    assert result.exit_code == 1
    assert "--attention-dir" in result.output


# --- a model trained to look ------------------------------------------------------------

SQUARE = 16  # pixels; a 64x64 image, so a corner square covers the corner 2x2 cells of the 8x8 grid
COLOURS = {"white": (255, 255, 255), "yellow": (255, 255, 0)}


def square_image(colour: str | None, corner: int) -> np.ndarray:
    """A black 64x64 RGB image with a coloured square in corner 0 (top left) .. 3 (bottom right)."""
    image = np.zeros((64, 64, 3), np.uint8)
    if colour is not None:
        y, x = (corner // 2) * (64 - SQUARE), (corner % 2) * (64 - SQUARE)
        image[y : y + SQUARE, x : x + SQUARE] = COLOURS[colour]
    return image


def test_a_model_trained_to_look_at_the_square_puts_its_attention_there(tmp_path: Path) -> None:
    """Train a tiny model on CPU (seconds), export it, caption through the runtime: the peak is on the square.

    Captions name the square's colour wherever it is; images without a square
    say "no square". That third kind makes the model find the square for both
    colours: with only two it can name one colour by the absence of the other
    and never look.
    """
    torch = pytest.importorskip("torch")
    from capcli.export import export_bundle
    from tiny_bundle import make_tiny_model

    from capcli.bundle import load_bundle
    from capcli.runtime import Captioner
    from capcli.text import Vocab, tokenize

    texts = [f"{c} square" for c in COLOURS] + ["no square"]
    vocab = Vocab.build([tokenize(t) for t in texts], min_count=1)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only fight over the shared cores
    try:
        model = make_tiny_model(vocab, seed=0, dropout=0.0, max_len=4).train()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            kinds = rng.integers(len(texts), size=32)
            corners = rng.integers(4, size=32)
            batch = np.stack(
                [square_image(texts[k].split()[0] if k < len(COLOURS) else None, c) for k, c in zip(kinds, corners)]
            )  # (B, 64, 64, 3)
            x = torch.from_numpy((batch / 255.0 - 0.5) / 0.5).float().permute(0, 3, 1, 2)  # (B, 3, 64, 64)
            ids = torch.tensor([[vocab.start_id, *vocab.encode(tokenize(texts[k])), vocab.end_id] for k in kinds])
            logits, _ = model(model.backbone_grid(x), ids)  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        bundle_dir = export_bundle(model.eval(), vocab, tmp_path / "looker")
    finally:
        torch.set_num_threads(threads)

    bundle = load_bundle(str(bundle_dir))
    captioner = Captioner(bundle, device="cpu", beam=3)
    cases = [(colour, corner) for colour in COLOURS for corner in range(4)]
    arrays = []
    for colour, corner in cases:  # through PNG files and the real reader, as the CLI sees them
        path = tmp_path / f"{colour}-{corner}.png"
        Image.fromarray(square_image(colour, corner)).save(path)
        arrays.append(images.load(str(path), bundle.preprocess).array)
    gh, gw = bundle.grid
    for (colour, corner), caption in zip(cases, captioner.caption(np.stack(arrays))):
        assert caption.text == f"{colour.capitalize()} square."
        alpha = caption.alphas[0]  # (gh, gw): the weights behind the colour word
        row, col = np.unravel_index(alpha.argmax(), alpha.shape)
        assert (row >= gh // 2, col >= gw // 2) == (corner >= 2, corner % 2 == 1), (colour, corner, alpha.round(3))
        quadrant = alpha[(corner // 2) * gh // 2 :][: gh // 2, (corner % 2) * gw // 2 :][:, : gw // 2]
        assert quadrant.sum() > 0.4  # a quarter of the image holds far more than a quarter of the weight
