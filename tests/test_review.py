"""capcli review: the HTML contact sheet, parsed, and opened in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from click.testing import CliRunner
from PIL import Image

from capcli.cli import main
from capcli.review import plan_card, read_output, render_card, thumbnail_jpeg
from capcli.writers import open_output

HOSTILE_NAME = "<img src=x onerror=alert(1)>.jpg"
HOSTILE_CAPTION = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> a <b>dog</b> & "cat"'
HOSTILE_URL = 'https://example.invalid/a.jpg?x=1&y="><script>window.__pwned=3</script>'


# -- a small run's output ----------------------------------------------------------------------------


def _photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> None:
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], 40):  # some structure, so the JPEG is no flat block
        image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (x, 0, x + 20, size[1] // 3))
    image.save(path, quality=90)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A caption run's records in ``tmp_path`` (the current directory): 5 photos, an attention figure,
    a URL, a missing file and an error record."""
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["beach.jpg", HOSTILE_NAME, "dog park.jpg", "tall#1.jpg", "wide?.jpg"]
    colours = [(200, 160, 90), (40, 90, 200), (60, 160, 60), (150, 40, 40), (120, 120, 120)]
    for name, colour in zip(names, colours):
        _photo(photos / name, colour, (120, 400) if name.startswith("tall") else (320, 240))
    (tmp_path / "att").mkdir()
    _photo(tmp_path / "att" / "000000-beach.png", (0, 0, 0))
    records = [
        {
            "index": 0,
            "source": "photos/beach.jpg",
            "status": "ok",
            "caption": "a sandy beach under a blue sky",
            "score": -0.41,
            "tags": [{"label": "seashore", "p": 0.81}, {"label": "sandbar", "p": 0.07}],
            "attention": "att/000000-beach.png",
        },
        {"index": 1, "source": f"photos/{HOSTILE_NAME}", "status": "ok", "caption": HOSTILE_CAPTION, "score": -0.9},
        {
            "index": 2,
            "source": "photos/dog park.jpg",
            "status": "ok",
            "caption": "a dog runs on the grass",
            "score": -0.12,
            "tags": [{"label": "golden retriever", "p": 0.5}],
        },
        {"index": 3, "source": "photos/tall#1.jpg", "status": "ok", "caption": "a red tower", "score": -1.7},
        {
            "index": 4,
            "source": "photos/broken.jpg",
            "status": "error",
            "caption": None,
            "score": None,
            "error_kind": "decode_error",
            "error": "cannot identify image file <broken>",
        },
        {"index": 5, "source": HOSTILE_URL, "status": "ok", "caption": "a photo from the web", "score": -0.5},
        {"index": 6, "source": "photos/gone.jpg", "status": "ok", "caption": "a photo moved away", "score": -0.3},
        {
            "index": 7,
            "source": "photos/wide?.jpg",
            "status": "ok",
            "caption": "a grey wall",
            "score": -0.2,
            "n_frames": 3,
        },
    ]
    with open(tmp_path / "out.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


class Page(HTMLParser):
    """Elements of the page as (tag, attrs, text inside), text per card, and every URL used."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.cards: list[dict] = []
        self._stack: list[tuple[str, str | None]] = []  # (tag, class) of open card parts
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        classes = (attributes.get("class") or "").split()
        if tag == "article" and "card" in classes:
            self.cards.append({"attrs": attributes, "classes": classes, "text": {}, "imgs": [], "links": []})
        elif self.cards and self._in_card():
            if tag == "img":
                self.cards[-1]["imgs"].append(attributes)
            if tag == "a":
                self.cards[-1]["links"].append(attributes)
        if tag not in ("img", "meta", "link", "input", "br"):
            self._stack.append((tag, classes[0] if classes else None))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.cards and self._in_card():
            for _, cls in reversed(self._stack):
                if cls in ("cap", "src", "kind", "msg", "meta", "tags", "thumb", "attn"):
                    self.cards[-1]["text"][cls] = self.cards[-1]["text"].get(cls, "") + data
                    break

    def _in_card(self) -> bool:
        return any(tag == "article" for tag, _ in self._stack)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


def _review(*args: str) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["review", *args])
    assert result.exit_code == 0, result.output
    out = args[args.index("-o") + 1] if "-o" in args else os.path.splitext(args[0])[0] + ".html"
    return Path(out).read_text(encoding="utf-8"), result.output


# -- the HTML ------------------------------------------------------------------------------------------


def test_one_card_per_record_in_order(run: list[dict]) -> None:
    text, said = _review("out.jsonl", "-o", "review.html")
    page = Page(text)
    assert len(page.cards) == len(run)
    assert [card["attrs"]["data-index"] for card in page.cards] == [str(r["index"]) for r in run]
    assert [card["attrs"]["data-score"] for card in page.cards] == [
        "" if r["score"] is None else repr(r["score"]) for r in run
    ]
    for card, record in zip(page.cards, run):
        assert card["text"]["src"] == record["source"]
        if record["status"] == "ok":
            assert card["text"]["cap"] == record["caption"]  # shown as text, whatever it holds
    assert "review.html: 8 cards (7 captioned, 1 error), 5 thumbnails, 2 without a preview" in said
    assert "not_found 1" in said and "remote 1" in said


def test_thumbnails_are_small_embedded_jpegs(run: list[dict]) -> None:
    page = Page(_review("out.jsonl", "-o", "review.html", "--thumb-size", "96")[0])
    shown = [card for card in page.cards if card["imgs"]]
    assert len(shown) == 5
    for card in shown:
        (img,) = card["imgs"]
        assert img["src"].startswith("data:image/jpeg;base64,")
        assert img["loading"] == "lazy"
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) == 96
            assert thumb.size == (int(img["width"]), int(img["height"]))
    tall = page.cards[3]["imgs"][0]
    assert (int(tall["width"]), int(tall["height"])) == (29, 96)  # 120x400, upright


def test_hostile_file_name_caption_and_url_stay_text(run: list[dict]) -> None:
    text, _ = _review("out.jsonl", "-o", "review.html")
    page = Page(text)
    # Only the page's own elements: no <script> but its own, no <img> but thumbnails, no event handlers.
    assert len(page.all("script")) == 1 and all(not attrs.get("src") for attrs in page.all("script"))
    assert all(attrs["src"].startswith("data:image/jpeg;base64,") for attrs in page.all("img"))
    assert not [attrs for _, attrs in page.elements if any(name.startswith("on") for name in attrs)]
    assert page.cards[1]["text"]["src"] == f"photos/{HOSTILE_NAME}"
    assert page.cards[1]["text"]["cap"] == HOSTILE_CAPTION
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    assert "<b>dog</b>" not in text and "&lt;b&gt;dog&lt;/b&gt;" in text
    # The hostile file's link is a percent-encoded relative URL to the file itself.
    (link,) = page.cards[1]["links"]
    assert link["href"] == "photos/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.jpg"
    assert unquote_to_bytes(link["href"]).decode() == f"photos/{HOSTILE_NAME}"
    # A URL source: the exact URL in the link (escaped in the markup), no thumbnail fetched.
    assert page.cards[5]["links"][0]["href"] == HOSTILE_URL
    assert page.cards[5]["links"][0]["rel"] == "noopener noreferrer"
    assert "remote photo" in page.cards[5]["text"]["thumb"]
    # Hash-named and ?-named files stay paths, not fragments or queries.
    assert page.cards[3]["links"][0]["href"] == "photos/tall%231.jpg"
    assert page.cards[7]["links"][0]["href"] == "photos/wide%3F.jpg"


def test_page_loads_nothing_from_the_network(run: list[dict]) -> None:
    page = Page(_review("out.jsonl", "-o", "review.html")[0])
    (policy,) = [a["content"] for a in page.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in policy and "img-src data:;" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    for tag, attrs in page.elements:
        for name in ("src", "srcset", "poster", "data"):
            assert not attrs.get(name) or attrs[name].startswith("data:"), (tag, attrs)
    assert all(a["href"] == "data:," for a in page.all("link"))
    assert not page.all("iframe") and not page.all("object") and not page.all("embed")


def test_error_cards_show_kind_and_message(run: list[dict]) -> None:
    page = Page(_review("out.jsonl", "-o", "review.html")[0])
    errors = [card for card in page.cards if "error" in card["classes"]]
    assert len(errors) == 1
    (card,) = errors
    assert card["text"]["kind"] == "decode_error"
    assert card["text"]["msg"] == "cannot identify image file <broken>"
    assert card["attrs"]["data-score"] == "" and not card["imgs"] and "cap" not in card["text"]
    # A captioned record whose photo is gone is no error card: its caption, and why there is no preview.
    gone = page.cards[6]
    assert "error" not in gone["classes"] and gone["text"]["cap"] == "a photo moved away"
    assert gone["text"]["thumb"].startswith("not_found")


def test_tags_attention_and_frames(run: list[dict]) -> None:
    os.makedirs("sub/dir")
    page = Page(_review("out.jsonl", "-o", "sub/dir/review.html")[0])
    beach = page.cards[0]
    assert beach["text"]["tags"] == "seashore 0.81sandbar 0.07"
    assert [link["href"] for link in beach["links"]] == ["../../photos/beach.jpg", "../../att/000000-beach.png"]
    assert beach["text"]["attn"] == "attention figure"
    assert "3 frames" in page.cards[7]["text"]["meta"]


def test_link_mode_uses_the_originals(run: list[dict]) -> None:
    text, said = _review("out.jsonl", "-o", "review.html", "--link")
    page = Page(text)
    srcs = [card["imgs"][0]["src"] if card["imgs"] else None for card in page.cards]
    assert srcs[0] == "photos/beach.jpg"
    assert srcs[1] == "photos/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.jpg"
    assert srcs[4] is None  # the error record
    assert srcs[5] == HOSTILE_URL
    (policy,) = [a["content"] for a in page.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert "img-src data: file: http: https:" in policy
    assert "7 linked photos" in said
    assert len(text) < 20_000


def test_csv_records_with_extra_columns(run: list[dict], tmp_path: Path) -> None:
    writer, _ = open_output(str(tmp_path / "out.csv"), "csv", extra_columns=("attention", "tags"))
    for record in run:
        writer.write(record)
    writer.close()
    records = read_output("out.csv")
    assert [r["index"] for r in records] == list(range(8))
    assert records[0]["tags"] == run[0]["tags"] and records[0]["score"] == -0.41
    assert records[4]["score"] is None and records[4]["error_kind"] == "decode_error"
    assert records[1]["caption"] == HOSTILE_CAPTION
    page = Page(_review("out.csv", "-o", "csv.html")[0])
    assert len(page.cards) == 8
    assert page.cards[0]["text"]["tags"] == "seashore 0.81sandbar 0.07"
    assert page.cards[1]["text"]["cap"] == HOSTILE_CAPTION


def test_truncated_last_record_is_left_out_and_default_output_name(run: list[dict]) -> None:
    with open("out.jsonl", "a", encoding="utf-8") as f:
        f.write('{"index": 8, "source": "photos/x.jpg", "sta')
    text, _ = _review("out.jsonl")  # -> out.html
    assert len(Page(text).cards) == 8


def test_unreadable_records_file_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.jsonl").write_text('{"index": 0, "source": "a.jpg", "status": "ok"}\nnot json\n')
    result = CliRunner().invoke(main, ["review", "bad.jsonl", "-o", "r.html"])
    assert result.exit_code == 1
    assert "bad.jsonl: line 2 is not a capcli JSONL record" in result.output
    assert "resuming" not in result.output and not Path("r.html").exists()
    Path("bad.csv").write_text("a,b\n1,2\n")
    result = CliRunner().invoke(main, ["review", "bad.csv", "-o", "r.html"])
    assert result.exit_code == 1 and "not a capcli CSV" in result.output
    result = CliRunner().invoke(main, ["review", "bad.csv", "-o", "bad.csv"])
    assert result.exit_code == 2
    assert not [name for name in os.listdir(".") if name.endswith(".part")]


def test_ctrl_c_exits_130_and_writes_no_page(run: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from capcli import review

    render_card = review.render_card

    def interrupt_at_third(card: review.Card) -> str:
        if card.position == 2:
            raise KeyboardInterrupt
        return render_card(card)

    monkeypatch.setattr(review, "render_card", interrupt_at_third)
    result = CliRunner().invoke(main, ["review", "out.jsonl", "-o", "r.html"])
    assert result.exit_code == 130
    assert result.stderr == "interrupted; r.html not written\n"
    assert not Path("r.html").exists() and not [name for name in os.listdir(".") if name.endswith(".part")]


def test_undecodable_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = b"caf\xe9.jpg"  # Latin-1, not UTF-8
    try:
        _photo(Path(os.fsdecode(raw)), (10, 200, 10))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    writer, _ = open_output("out.jsonl", "jsonl")
    writer.write({"index": 0, "source": os.fsdecode(raw), "status": "ok", "caption": "green", "score": -0.1})
    writer.close()
    page = Page(_review("out.jsonl", "-o", "r.html")[0])
    (card,) = page.cards
    assert card["text"]["src"] == "caf\ufffd.jpg"
    assert card["imgs"][0]["src"].startswith("data:image/jpeg")
    assert unquote_to_bytes(card["links"][0]["href"]) == raw


def test_hostile_record_values_do_not_break_the_page() -> None:
    record = {
        "index": '7"><script>',
        "source": "x.jpg",
        "status": "ok",
        "caption": {"a": "<b>"},
        "score": float("nan"),
        "tags": [{"label": "<i>", "p": "high"}, 3, "plain"],
        "n_frames": True,
        "attention": "javascript:alert(1)",
    }
    html = render_card(plan_card(3, record, root=".", page_dir=os.getcwd(), link=False))
    page = Page(html)
    (card,) = page.cards
    assert card["attrs"]["data-index"] == "3" and card["attrs"]["data-score"] == ""
    assert card["text"]["cap"] == '{"a": "<b>"}'
    assert card["text"]["tags"] == "<i>plain"
    assert [link["href"] for link in card["links"]] == ["x.jpg", "javascript%3Aalert%281%29"]
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html


def test_thumbnail_jpeg_turns_photos_upright(tmp_path: Path) -> None:
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "turned.jpg", exif=exif)
    data, width, height = thumbnail_jpeg(str(tmp_path / "turned.jpg"), 60)
    assert (width, height) == (20, 60)
    assert data.startswith(b"\xff\xd8")


# -- in a real browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    from cdp import find_chromium

    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not found, and CI is set: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not found (apt-get install chromium, or set CAPCLI_CHROMIUM)")
    return path


def test_in_headless_chromium(run: list[dict], chromium: str, tmp_path: Path) -> None:
    from cdp import Browser

    _review("out.jsonl", "-o", "review.html")
    url = (tmp_path / "review.html").as_uri()
    cards_js = "[...document.querySelectorAll('#grid > .card')]"
    visible = f"{cards_js}.filter(c => !c.hidden && c.offsetParent !== null).map(c => +c.dataset.index)"

    def choose(select: str, value: str) -> None:
        page.evaluate(
            f"(() => {{ const s = document.getElementById('{select}'); s.value = '{value}';"
            "s.dispatchEvent(new Event('change')); })()"
        )

    with Browser.launch(chromium) as browser:
        page = browser.new_page(1280, 900)
        page.navigate(url)
        assert page.evaluate(f"{cards_js}.length") == len(run)
        assert page.evaluate(visible) == list(range(8))
        assert page.evaluate("document.getElementById('controls').hidden") is False
        assert page.evaluate("document.getElementById('count').textContent") == "8 shown"
        assert page.evaluate("window.__pwned") is None  # the hostile caption and URL ran nothing
        # Thumbnails decode (none broken); the page's own font and layout work.
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.evaluate("Promise.all([...document.images].map(i => i.decode()))")
        assert page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length") == 5

        png = page.screenshot()
        with Image.open(io.BytesIO(png)) as shot:
            assert shot.size == (1280, 900)
            assert len(shot.convert("RGB").getcolors(1 << 20) or range(1 << 20)) > 50  # not a blank page

        choose("sort", "score")  # least confident first; the error (no score) last
        assert page.evaluate(visible) == [3, 1, 5, 0, 6, 7, 2, 4]
        assert page.evaluate("location.hash") == "#sort=score"
        choose("sort", "score-desc")
        assert page.evaluate(visible) == [2, 7, 6, 0, 5, 1, 3, 4]
        choose("show", "errors")
        assert page.evaluate(visible) == [4]
        assert page.evaluate("document.getElementById('count').textContent") == "1 of 8 shown"
        choose("show", "ok")
        assert page.evaluate(visible) == [2, 7, 6, 0, 5, 1, 3]
        choose("show", "all")
        choose("sort", "index")
        assert page.evaluate(visible) == list(range(8))

        # The keyboard: "/" focuses the search box, typed words filter (debounced), Esc clears.
        page.evaluate("document.activeElement.blur()")
        page.press("/", "Slash", text="/")
        assert page.evaluate("document.activeElement.id") == "q"
        page.type("DOG")
        page.evaluate("new Promise(r => setTimeout(r, 300))")
        assert page.evaluate(visible) == [1, 2]  # "dog" in the hostile caption and in "a dog runs"
        page.type(" runs")
        page.evaluate("new Promise(r => setTimeout(r, 300))")
        assert page.evaluate(visible) == [2]
        page.press("Escape")
        assert page.evaluate(visible) == list(range(8))
        for words, indexes in (("seashore", [0]), ("broken", [4]), ("nothing-like-this", [])):
            page.evaluate(
                f"(() => {{ const q = document.getElementById('q'); q.value = '{words}';"
                "q.dispatchEvent(new Event('input')); })()"
            )
            page.evaluate("new Promise(r => setTimeout(r, 300))")
            assert page.evaluate(visible) == indexes
            assert page.evaluate("document.getElementById('empty').hidden") is bool(indexes)

        # The view is kept in the fragment: reloading with one restores it.
        page.navigate("about:blank")
        page.navigate(url + "#sort=score&show=ok&q=a")
        assert page.evaluate("[document.getElementById('sort').value, document.getElementById('show').value]") == [
            "score",
            "ok",
        ]
        assert page.evaluate(visible) == [3, 1, 5, 0, 6, 7, 2]

        # A phone: two columns, nothing wider than the screen.
        phone = browser.new_page(390, 844, mobile=True)
        phone.navigate(url)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        columns = phone.evaluate("getComputedStyle(document.getElementById('grid')).gridTemplateColumns")
        assert len(columns.split()) == 2
        with Image.open(io.BytesIO(phone.screenshot())) as shot:
            assert shot.size == (390, 844)

        for tab in (page, phone):
            assert tab.errors() == []
            assert [kind for kind, _ in tab.console] == []
            assert all(u.startswith(("file:", "data:")) for u in tab.requests), tab.requests


def test_pages_of_200_in_headless_chromium(chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """450 records: three pages, turned with the buttons and the keyboard; sorting and filtering span all
    pages; the page is kept in the fragment; without script every card shows."""
    from cdp import Browser

    monkeypatch.chdir(tmp_path)
    with open("out.jsonl", "w", encoding="utf-8") as f:
        for i in range(450):
            record = {
                "index": i,
                "source": f"gone/{i}.jpg",
                "status": "ok",
                "caption": f"photo number {i}",
                "score": -((i * 37) % 450) / 100,
            }
            if i % 10 == 9:
                record |= {
                    "status": "error",
                    "caption": None,
                    "score": None,
                    "error_kind": "not_found",
                    "error": "no such file",
                }
            f.write(json.dumps(record) + "\n")
    _review("out.jsonl", "-o", "review.html")
    url = (tmp_path / "review.html").as_uri()
    shown = "[...document.querySelectorAll('#grid > .card')].filter(c => c.offsetParent).map(c => +c.dataset.index)"
    where = "document.querySelector('.pager .where').textContent"

    with Browser.launch(chromium) as browser:
        page = browser.new_page()
        page.navigate(url)
        assert page.evaluate(shown) == list(range(200))
        assert page.evaluate(where) == "page 1 of 3"
        assert page.evaluate("document.getElementById('count').textContent") == "450 shown"
        page.press("n", "KeyN", text="n")
        assert page.evaluate(shown) == list(range(200, 400))
        assert page.evaluate("location.hash") == "#page=2"
        page.evaluate("document.querySelector('.pager.bottom .next').click()")
        assert page.evaluate(shown) == list(range(400, 450))
        assert page.evaluate("document.querySelector('.pager .next').disabled") is True
        page.press("p", "KeyP", text="p")
        assert page.evaluate(where) == "page 2 of 3"

        page.evaluate(
            "(() => { const s = document.getElementById('sort'); s.value = 'score';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        first = page.evaluate(shown)
        assert len(first) == 200 and page.evaluate(where) == "page 1 of 3"  # back to page 1
        scores = [-((i * 37) % 450) / 100 for i in first]
        assert scores == sorted(scores) and min(scores) == -4.49
        page.evaluate(
            "(() => { const s = document.getElementById('show'); s.value = 'errors';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        assert page.evaluate(shown) == list(range(9, 450, 10))
        assert page.evaluate("document.querySelector('.pager').hidden") is True

        page.navigate("about:blank")
        page.navigate(url + "#page=3")
        assert page.evaluate(shown) == list(range(400, 450))
        assert page.errors() == []

        plain = browser.new_page()
        plain.send("Emulation.setScriptExecutionDisabled", {"value": True})
        plain.navigate(url)
        assert len(plain.evaluate(shown)) == 450
        assert plain.evaluate("document.getElementById('controls').offsetParent") is None  # no dead controls
        assert plain.errors() == []


def test_examples_captioned_then_reviewed_in_chromium(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's "done when": capcli caption examples -o out.jsonl && capcli review out.jsonl -o review.html."""
    from cdp import Browser

    examples = Path(__file__).resolve().parents[1] / "examples"
    photos = sorted(p for p in examples.glob("*.jpg")) if examples.is_dir() else []
    if not photos:
        pytest.skip("no example photos in examples/")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["caption", str(examples), "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    text, _ = _review("out.jsonl", "-o", "review.html")
    assert len(Page(text).cards) == len(photos)
    with Browser.launch(chromium) as browser:
        page = browser.new_page()
        page.navigate((tmp_path / "review.html").as_uri())
        assert page.evaluate("document.querySelectorAll('#grid > .card').length") == len(photos)
        page.evaluate(
            "(() => { const s = document.getElementById('sort'); s.value = 'score';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        scores = page.evaluate("[...document.querySelectorAll('#grid > .card')].map(c => +c.dataset.score)")
        assert scores == sorted(scores) and len(scores) == len(photos)
        page.evaluate("Promise.all([...document.images].map(i => i.decode()))")
        assert page.evaluate("[...document.images].filter(i => i.naturalWidth > 0).length") == len(photos)
        assert page.errors() == []
