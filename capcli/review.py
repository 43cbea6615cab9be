"""An output file (JSONL or CSV) -> one self-contained HTML contact sheet of its records.

One card per record, in file order: a thumbnail (a small JPEG embedded as a
``data:`` URI, or with ``link`` the original path/URL), the caption, score,
index, source, tags and a link to the attention figure when the record has
them; error records as error cards with their kind and message.

The page needs no server and loads nothing: its Content-Security-Policy
allows only the page's own inline style and script (by their sha256 hashes)
and ``data:`` images (plus the originals with ``link``). Every value from
the records is HTML-escaped; URLs in ``href``/``src`` are http(s) URLs from
the records or percent-encoded relative paths, never anything else. Plain
JavaScript sorts (index, score either way), filters (errors only, captioned
only) and searches (words in captions, sources, tags, error messages); the
state lives in the URL fragment so a view can be reloaded or shared.

Large outputs: thumbnails are made on a thread pool (Pillow releases the GIL
while decoding, resizing and encoding), JPEGs are decoded at a reduced scale,
and the page is written as they complete, in order, through a temporary file
that replaces the output only when complete. In the browser every card has
``content-visibility: auto`` and every image ``loading="lazy"``, so layout,
paint and image decoding are done for the cards on screen only.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from PIL import Image

from capcli.atomic import replacing
from capcli.errors import FatalError, ItemError
from capcli.images import open_rgb
from capcli.writers import COLUMNS, Record, infer_format, read_records

THUMB_SIZE = 160  # longest side, pixels
THUMB_QUALITY = 70  # JPEG quality
DEFAULT_WORKERS = min(32, os.cpu_count() or 4)

_URL = re.compile(r"https?://", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# -- reading ---------------------------------------------------------------------------------------


def read_output(path: str, fmt: str | None = None) -> list[Record]:
    """The records of a ``capcli caption``/``url-list`` output file, with JSON types.

    ``fmt``: "jsonl" or "csv" (default: from the file name). CSV files may
    have extra columns after the standard ones (``attention``, ``tags``);
    their cells are turned back into numbers, lists and ``None``. A truncated
    last record (an interrupted run) is left out, as ``--resume`` does.
    """
    fmt = infer_format(path, fmt)
    try:
        columns = _csv_columns(path) if fmt == "csv" else COLUMNS
        records = read_records(path, fmt, columns)
    except OSError as exc:
        raise FatalError(f"cannot read {path}: {exc.strerror or exc}") from None
    except FatalError as exc:  # its messages are worded for --resume
        raise FatalError(str(exc).replace("; not resuming", "")) from None
    return [_from_csv(record) for record in records] if fmt == "csv" else records


def _csv_columns(path: str) -> tuple[str, ...]:
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", "surrogateescape")
    if not first.strip():
        return COLUMNS
    header = tuple(next(csv.reader([first])))
    if header[: len(COLUMNS)] != COLUMNS:
        raise FatalError(f"{path}: not a capcli CSV (header {list(header)!r})")
    return header


def _from_csv(record: Record) -> Record:
    out: Record = {}
    for name, cell in record.items():
        value: Any = cell if cell != "" else None
        if value is not None:
            if name in ("index", "n_frames"):
                value = _number(value, int)
            elif name == "score":
                value = _number(value, float)
            elif name == "tags":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
        out[name] = value
    return out


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text


# -- thumbnails ------------------------------------------------------------------------------------


def thumbnail_jpeg(path: str, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> tuple[bytes, int, int]:
    """A JPEG of the upright photo whose longest side is at most ``size``: (bytes, width, height).

    Raises :class:`~capcli.errors.ItemError` as the captioning reader does.
    """
    image, _ = open_rgb(path, draft_to=size)  # a big JPEG decodes at 1/2 .. 1/8 scale
    image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue(), image.width, image.height


def _thumbnail_job(path: str, size: int, quality: int) -> tuple[str, int, int] | ItemError:
    """A data URI and its size, or the reason there is none (never raises: one bad photo is one card)."""
    try:
        data, width, height = thumbnail_jpeg(path, size, quality)
    except ItemError as exc:
        return exc
    except Exception as exc:  # e.g. an encoder error: still only this card's preview
        return ItemError("decode_error", f"{type(exc).__name__}: {exc}")
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"), width, height


# -- cards -----------------------------------------------------------------------------------------


@dataclass
class Card:
    """What one record shows; ``path`` is the local file to take a thumbnail of, if any."""

    position: int
    record: Record
    path: str | None = None
    href: str | None = None
    attention_href: str | None = None
    thumb: tuple[str, int, int] | None = None  # data URI (or link) and its width, height
    no_preview: str | None = None  # why there is no thumbnail, shown in its place
    no_preview_kind: str = ""  # that reason as an error kind, counted in the summary

    @property
    def is_error(self) -> bool:
        return self.record.get("status") == "error"


def plan_card(position: int, record: Record, *, root: str, page_dir: str, link: bool) -> Card:
    """Resolve the record's source and attention figure into a local path and page-relative links."""
    card = Card(position, record)
    source = record.get("source")
    if not isinstance(source, str) or not source:
        card.no_preview, card.no_preview_kind = "no source", "no_source"
        return card
    if _URL.match(source):
        card.href = source
        if link and not card.is_error:
            card.thumb = (source, 0, 0)
        else:
            card.no_preview, card.no_preview_kind = "remote photo (not fetched; --link shows it)", "remote"
    else:
        card.path = _under(root, source)
        card.href = _relative_url(card.path, page_dir)
        if link and not card.is_error and card.href:
            card.thumb = (card.href, 0, 0)
    attention = record.get("attention")
    if isinstance(attention, str) and attention:
        card.attention_href = attention if _URL.match(attention) else _relative_url(_under(root, attention), page_dir)
    return card


def _under(root: str, path: str) -> str:
    """``path`` as the records give it, relative to ``root`` unless absolute (``root`` "." adds nothing)."""
    return path if root in ("", ".") else os.path.join(root, path)


def _relative_url(path: str, page_dir: str) -> str | None:
    """``path`` as a percent-encoded URL relative to the page's folder (file: URL across drives)."""
    try:
        absolute = os.path.abspath(path)
        try:
            rel = PurePath(os.path.relpath(absolute, page_dir)).as_posix()
        except ValueError:  # another drive on Windows
            return PurePath(absolute).as_uri()
        return quote(os.fsencode(rel), safe="/")
    except (ValueError, UnicodeError):  # a NUL, a lone surrogate that is no file-name byte
        return None


# -- the page --------------------------------------------------------------------------------------

_CSS = """\
:root{color-scheme:light dark;--bg:#f4f4f1;--fg:#1b1b1b;--muted:#5c5c5c;--card:#fff;--line:#d9d9d4;\
--err:#b3261e;--errbg:#fdecea;--accent:#1a5fb4}
@media (prefers-color-scheme:dark){:root{--bg:#141414;--fg:#ececec;--muted:#a8a8a8;--card:#222;--line:#3a3a3a;\
--err:#ff8a80;--errbg:#3b1e1c;--accent:#8ab4f8}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg)}
header{position:sticky;top:0;z-index:1;background:var(--bg);border-bottom:1px solid var(--line);padding:.5rem 1rem}
h1{font-size:1.1rem;margin:0;overflow-wrap:anywhere}
.stats{margin:.1rem 0 .4rem;color:var(--muted)}
#controls{display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:center}
#controls[hidden]{display:none}
label{display:flex;gap:.35rem;align-items:center}
input,select{font:inherit;padding:.25rem .4rem;max-width:100%}
#q{width:16rem}
#count{color:var(--muted)}
.keys{color:var(--muted);font-size:.85em}
kbd{border:1px solid var(--line);border-radius:3px;padding:0 .3em;font:inherit}
a{color:var(--accent)}
:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.75rem;padding:1rem;margin:0}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.5rem;display:flex;\
flex-direction:column;gap:.3rem;min-width:0;content-visibility:auto;contain-intrinsic-size:auto 290px}
.card[hidden]{display:none}
#grid:not(.paged)>.card:nth-child(n+201){display:none}
.pager button{font:inherit;padding:.2rem .6rem}
.pager.bottom{display:flex;justify-content:center;align-items:center;gap:1rem;padding:0 1rem 2rem}
.pager[hidden]{display:none}
.thumb{display:flex;align-items:center;justify-content:center;aspect-ratio:4/3;background:var(--line);\
border-radius:4px;overflow:hidden;color:var(--muted);text-align:center;font-size:.8em;padding:0;text-decoration:none}
.thumb img{display:block;width:100%;height:100%;object-fit:contain}
.cap{margin:0;overflow-wrap:anywhere}
.meta{display:flex;flex-wrap:wrap;justify-content:space-between;gap:0 .5rem;color:var(--muted);font-size:.85em;\
margin:0;font-variant-numeric:tabular-nums}
.src{margin:0;font-size:.8em;color:var(--muted);overflow-wrap:anywhere}
.tags{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.25rem;font-size:.8em}
.tags li{border:1px solid var(--line);border-radius:1em;padding:0 .45em}
.tags .p{color:var(--muted)}
.attn{font-size:.85em}
.error{border-color:var(--err);background:var(--errbg)}
.kind{color:var(--err);font-weight:600;margin:0;overflow-wrap:anywhere}
.msg{margin:0;font-size:.85em;overflow-wrap:anywhere}
.empty{padding:2rem;text-align:center;color:var(--muted)}
@media (max-width:520px){header{position:static;padding:.4rem .5rem}#grid{grid-template-columns:repeat(auto-fill,minmax(140px,1fr));\
gap:.5rem;padding:.5rem}#controls label{flex:1 1 100%}#controls select,#q{flex:1;width:auto}.keys{display:none}}
"""

# Without script every card shows (the rule above keeps the page's first layout to one page's cards).
_NOSCRIPT_CSS = "#grid:not(.paged)>.card:nth-child(n+201){display:flex}"

_JS = """\
(function () {
  "use strict";
  var PAGE = 200;  // cards per page (also in the stylesheet's rule for the page before this script runs)
  var grid = document.getElementById("grid"), controls = document.getElementById("controls");
  var sortBy = document.getElementById("sort"), show = document.getElementById("show");
  var q = document.getElementById("q"), count = document.getElementById("count");
  var empty = document.getElementById("empty"), pagers = document.querySelectorAll(".pager");
  var items = [], cards = grid.children, sorted = [], shown = [], order = null, page = 0, timer = 0;
  for (var i = 0; i < cards.length; i++) {
    var el = cards[i], s = el.getAttribute("data-score");
    items.push({el: el, pos: i, index: +el.getAttribute("data-index"), score: s === "" ? NaN : +s,
                error: el.classList.contains("error"), text: null});
  }
  // From here on the cards live in ``items``; the page holds only the cards of one page, so layout,
  // sorting and filtering cost the same for 100 records or 100,000.
  grid.textContent = "";
  grid.classList.add("paged");
  function text(it) {
    if (it.text === null) {
      var parts = it.el.querySelectorAll(".cap,.src,.tags,.kind,.msg"), t = "";
      for (var j = 0; j < parts.length; j++) t += parts[j].textContent + "\\n";
      it.text = t.toLowerCase();
    }
    return it.text;
  }
  function byIndex(a, b) { return a.index - b.index || a.pos - b.pos; }
  function byScore(dir) {
    return function (a, b) {
      var an = isNaN(a.score), bn = isNaN(b.score);
      if (an || bn) return (an - bn) || byIndex(a, b);
      return dir * (a.score - b.score) || byIndex(a, b);
    };
  }
  function sort() {
    var key = sortBy.value;
    if (key === order) return;
    sorted = items.slice().sort(key === "score" ? byScore(1) : key === "score-desc" ? byScore(-1) : byIndex);
    order = key;
  }
  function filter() {
    var which = show.value, words = q.value.trim().toLowerCase().split(/\\s+/).filter(Boolean);
    shown = sorted.filter(function (it) {
      if (which !== "all" && (which === "errors") !== it.error) return false;
      if (!words.length) return true;
      var t = text(it);
      for (var w = 0; w < words.length; w++) if (t.indexOf(words[w]) < 0) return false;
      return true;
    });
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    var frag = document.createDocumentFragment(), end = Math.min(shown.length, (page + 1) * PAGE);
    for (var i = page * PAGE; i < end; i++) frag.appendChild(shown[i].el);
    grid.textContent = "";
    grid.appendChild(frag);
    count.textContent = shown.length === items.length ? shown.length + " shown"
                                                      : shown.length + " of " + items.length + " shown";
    empty.hidden = shown.length > 0;
    for (var p = 0; p < pagers.length; p++) {
      pagers[p].hidden = pages < 2;
      pagers[p].querySelector(".where").textContent = "page " + (page + 1) + " of " + pages;
      pagers[p].querySelector(".prev").disabled = page === 0;
      pagers[p].querySelector(".next").disabled = page === pages - 1;
    }
  }
  function save() {
    var state = new URLSearchParams();
    if (sortBy.value !== "index") state.set("sort", sortBy.value);
    if (show.value !== "all") state.set("show", show.value);
    if (q.value) state.set("q", q.value);
    if (page) state.set("page", page + 1);
    var hash = state.toString();
    try { history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search); }
    catch (e) { /* a browser that refuses replaceState on file: pages: the view still works */ }
  }
  function update() {
    sort();
    filter();
    page = 0;
    render();
    window.scrollTo(0, 0);
    save();
  }
  function turn(step) {
    var before = page;
    page += step;
    render();
    if (page !== before) { window.scrollTo(0, 0); save(); }
  }
  function choose(select, value) {
    for (var i = 0; i < select.options.length; i++) if (select.options[i].value === value) select.value = value;
  }
  var state = new URLSearchParams(location.hash.slice(1));
  choose(sortBy, state.get("sort"));
  choose(show, state.get("show"));
  q.value = state.get("q") || "";
  sortBy.addEventListener("change", update);
  show.addEventListener("change", update);
  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(update, 120); });
  q.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && q.value) { q.value = ""; update(); e.preventDefault(); }
  });
  controls.addEventListener("submit", function (e) { e.preventDefault(); });
  for (var p = 0; p < pagers.length; p++) {
    pagers[p].querySelector(".prev").addEventListener("click", function () { turn(-1); });
    pagers[p].querySelector(".next").addEventListener("click", function () { turn(1); });
  }
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.ctrlKey || e.metaKey || e.altKey || tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (e.key === "/") { q.focus(); q.select(); e.preventDefault(); }
    else if (e.key === "n") turn(1);
    else if (e.key === "p") turn(-1);
  });
  sort();
  filter();
  page = (parseInt(state.get("page"), 10) || 1) - 1;
  render();
  controls.hidden = false;
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _policy(link: bool) -> str:
    images = "data: file: http: https:" if link else "data:"
    return (
        f"default-src 'none'; img-src {images}; style-src {_sha256(_CSS)} {_sha256(_NOSCRIPT_CSS)}; script-src {_sha256(_JS)}; "
        "base-uri 'none'; form-action 'none'"
    )


def _text(value: Any) -> str:
    """``value`` as escaped HTML text: undecodable file-name bytes and control characters shown as U+FFFD."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "replace").decode("utf-8")
    return html.escape(_CONTROL.sub("\ufffd", text), quote=True)


def _attr_url(url: str) -> str:
    return _text(url)


def _score(value: Any) -> str:
    """The score as written in the record, or "" when there is none (or it is no finite number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def render_head(*, title: str, link: bool, stats: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{html.escape(_policy(link))}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="capcli review">
<link rel="icon" href="data:,">
<title>{_text(title)}</title>
<style>{_CSS}</style>
<noscript><style>{_NOSCRIPT_CSS}</style></noscript>
</head>
<body>
<header>
<h1>{_text(title)}</h1>
<p class="stats">{stats}</p>
<form id="controls" role="search" hidden>
<label>Sort <select id="sort">
<option value="index">by index</option>
<option value="score">by score, least confident first</option>
<option value="score-desc">by score, most confident first</option>
</select></label>
<label>Show <select id="show">
<option value="all">all records</option>
<option value="errors">errors only</option>
<option value="ok">captioned only</option>
</select></label>
<label>Search <input id="q" type="search" placeholder="words in captions" autocomplete="off" spellcheck="false"></label>
<output id="count" aria-live="polite"></output>
<span class="pager" hidden><button type="button" class="prev">&lsaquo; previous</button> <span class="where"></span> \
<button type="button" class="next">next &rsaquo;</button></span>
<span class="keys"><kbd>/</kbd> search, <kbd>Esc</kbd> clear, <kbd>n</kbd> <kbd>p</kbd> next and previous page</span>
</form>
</header>
<main id="grid">
"""


def render_tail() -> str:
    return f"""</main>
<p id="empty" class="empty" hidden>No record matches.</p>
<nav class="pager bottom" hidden><button type="button" class="prev">&lsaquo; previous</button> \
<span class="where"></span> <button type="button" class="next">next &rsaquo;</button></nav>
<script>{_JS}</script>
</body>
</html>
"""


def render_card(card: Card) -> str:
    record = card.record
    index = record.get("index")
    index = index if isinstance(index, int) and not isinstance(index, bool) else card.position
    score = _score(record.get("score"))
    classes = "card error" if card.is_error else "card"
    parts = [f'<article class="{classes}" id="r{card.position}" data-index="{index}" data-score="{score}">']
    parts.append(_thumb_html(card))
    if card.is_error:
        parts.append(f'<p class="kind">{_text(record.get("error_kind") or "error")}</p>')
        parts.append(f'<p class="msg">{_text(record.get("error") or "")}</p>')
    else:
        caption = record.get("caption")
        parts.append(f'<p class="cap">{_text(caption) if caption is not None else ""}</p>')
    meta = [f"<span>#{index}</span>"]
    frames = record.get("n_frames")
    if isinstance(frames, int) and not isinstance(frames, bool) and frames > 1:
        meta.append(f"<span>{frames} frames</span>")
    if score:
        meta.append(f'<span class="score" title="score">{score}</span>')
    parts.append(f'<p class="meta">{"".join(meta)}</p>')
    parts.append(f'<p class="src">{_text(record.get("source", ""))}</p>')
    tags = _tags_html(record.get("tags"))
    if tags:
        parts.append(tags)
    if card.attention_href:
        parts.append(f'<a class="attn" href="{_attr_url(card.attention_href)}">attention figure</a>')
    parts.append("</article>\n")
    return "".join(parts)


def _thumb_html(card: Card) -> str:
    if card.thumb:
        src, width, height = card.thumb
        size = f' width="{width}" height="{height}"' if width and height else ""
        image = f'<img src="{_attr_url(src)}" alt=""{size} loading="lazy" decoding="async">'
    else:
        reason = card.no_preview or "no preview"
        image = f"<span>{_text(reason)}</span>"
    if card.href:
        rel = ' rel="noopener noreferrer"' if _URL.match(card.href) else ""
        return f'<a class="thumb" href="{_attr_url(card.href)}"{rel} aria-label="open the original">{image}</a>'
    return f'<div class="thumb">{image}</div>'


def _tags_html(tags: Any) -> str:
    if not isinstance(tags, list):
        return ""
    items = []
    for tag in tags:
        if isinstance(tag, dict) and "label" in tag:
            p = tag.get("p")
            prob = f' <span class="p">{p:.2f}</span>' if isinstance(p, (int, float)) and not isinstance(p, bool) else ""
            items.append(f'<li><span class="label">{_text(tag["label"])}</span>{prob}</li>')
        elif isinstance(tag, str):
            items.append(f'<li><span class="label">{_text(tag)}</span></li>')
    return f'<ul class="tags">{"".join(items)}</ul>' if items else ""


# -- the whole run ---------------------------------------------------------------------------------


@dataclass
class ReviewSummary:
    records: int = 0
    errors: int = 0
    thumbnails: int = 0
    linked: int = 0
    no_preview: Counter = field(default_factory=Counter)  # kind -> count, for captioned records
    bytes: int = 0
    seconds: float = 0.0

    def line(self, output: str) -> str:
        text = (
            f"{output}: {_plural(self.records, 'card')} ({self.records - self.errors} captioned, "
            f"{_plural(self.errors, 'error')})"
        )
        if self.thumbnails:
            text += f", {self.thumbnails} thumbnails"
        if self.linked:
            text += f", {self.linked} linked photos"
        missing = sum(self.no_preview.values())
        if missing:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.no_preview.items()))
            text += f", {missing} without a preview ({kinds})"
        return text + f"; {_size(self.bytes)} in {self.seconds:.1f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return ""


def write_review(
    records: list[Record],
    output: str,
    *,
    link: bool = False,
    size: int = THUMB_SIZE,
    quality: int = THUMB_QUALITY,
    workers: int = DEFAULT_WORKERS,
    root: str = ".",
    title: str = "capcli review",
    progress: Callable[[int], None] | None = None,
) -> ReviewSummary:
    """Write the contact sheet of ``records`` to ``output`` (atomically) and say what it holds.

    ``root``: the folder that relative sources and attention paths are
    relative to (where ``capcli caption`` ran). ``progress(n)`` is called
    after each card with the number of cards written so far.
    """
    started = time.monotonic()
    page_dir = os.path.dirname(os.path.abspath(output))
    cards = [plan_card(i, r, root=root, page_dir=page_dir, link=link) for i, r in enumerate(records)]
    summary = ReviewSummary(records=len(cards), errors=sum(card.is_error for card in cards))
    stats = (
        f"{_plural(summary.records, 'record')}: {summary.records - summary.errors} captioned, "
        f"{_plural(summary.errors, 'error')}"
    )
    try:
        with replacing(output) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out:
            out.write(render_head(title=title, link=link, stats=stats))
            for done, card in enumerate(_with_thumbnails(cards, link, size, quality, workers), 1):
                out.write(render_card(card))
                _count(summary, card, link)
                if progress:
                    progress(done)
            out.write(render_tail())
    except OSError as exc:
        raise FatalError(f"cannot write {output}: {exc.strerror or exc}") from None
    summary.bytes = os.path.getsize(output)
    summary.seconds = time.monotonic() - started
    return summary


def _count(summary: ReviewSummary, card: Card, link: bool) -> None:
    if card.is_error:
        return
    if card.thumb:
        if link:
            summary.linked += 1
        else:
            summary.thumbnails += 1
    else:
        summary.no_preview[card.no_preview_kind or "no_preview"] += 1


def _with_thumbnails(cards: list[Card], link: bool, size: int, quality: int, workers: int) -> Iterator[Card]:
    """``cards`` in order, each with its thumbnail made (on ``workers`` threads, a bounded window ahead)."""
    if link:
        yield from cards
        return
    window = max(64, 8 * workers)
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="capcli-thumb")
    pending: deque[tuple[Card, Future | None]] = deque()
    todo = iter(cards)
    try:
        yield from _fill(pending, todo, pool, window, size, quality)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fill(
    pending: deque, todo: Iterable[Card], pool: ThreadPoolExecutor, window: int, size: int, quality: int
) -> Iterator[Card]:
    todo = iter(todo)
    exhausted = False
    while True:
        while not exhausted and len(pending) < window:
            card = next(todo, None)
            if card is None:
                exhausted = True
                break
            wanted = card.path is not None and not card.is_error
            pending.append((card, pool.submit(_thumbnail_job, card.path, size, quality) if wanted else None))
        if not pending:
            return
        card, future = pending.popleft()
        if future is not None:
            result = future.result()
            if isinstance(result, ItemError):
                card.no_preview, card.no_preview_kind = f"{result.kind}: {result}", result.kind
            else:
                card.thumb = result
        yield card


def review(
    input_path: str,
    output: str,
    *,
    fmt: str | None = None,
    title: str | None = None,
    **options: Any,
) -> ReviewSummary:
    """Read ``input_path`` and write its contact sheet to ``output``; see :func:`write_review`."""
    records = read_output(input_path, fmt)
    return write_review(records, output, title=title or f"capcli review: {os.path.basename(input_path)}", **options)


__all__ = ["Card", "ReviewSummary", "read_output", "render_card", "review", "thumbnail_jpeg", "write_review"]
