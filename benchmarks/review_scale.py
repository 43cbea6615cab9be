"""How ``capcli review`` and its page behave with many records: build time, page size, and the page in
headless Chromium (load, memory, sort/filter/search times, frame times while scrolling).

    python benchmarks/review_scale.py -n 20000            # photo-like generated JPEGs, 1 in 50 an error
    python benchmarks/review_scale.py -n 20000 --plain    # the same page without content-visibility

Needs chromium on PATH (or $CAPCLI_CHROMIUM); uses tests/cdp.py. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

WORDS = "a man woman dog cat child runs sits on the in beach grass water snow street red blue ball bike".split()


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-like 640x480 JPEGs: gradients, shapes and sensor-like noise (their thumbnails are as big as
    real photos' thumbnails, unlike flat test images)."""
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.3, 0.3, (2, 3))
        pixels = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.integers(0, 640), rng.integers(0, 480)
            w, h = rng.integers(20, 200, 2)
            draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (480, 640, 3))
        path = folder / f"photo{i:04d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=88)
        paths.append(path)
    return paths


def make_records(path: Path, photos: list[Path], n: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            source = str(photos[i % len(photos)])
            if i % 50 == 7:
                record = {
                    "index": i,
                    "source": source,
                    "status": "error",
                    "caption": None,
                    "score": None,
                    "error_kind": "decode_error",
                    "error": "broken data",
                }
            else:
                caption = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 11)))
                record = {
                    "index": i,
                    "source": source,
                    "status": "ok",
                    "caption": caption,
                    "score": round(-rnd.random() * 2, 4),
                    "tags": [{"label": rnd.choice(WORDS), "p": round(rnd.random(), 4)} for _ in range(3)],
                }
            f.write(json.dumps(record) + "\n")


def pss_of_tree(pid: int) -> int:
    """Proportional set size of a process and all its descendants, bytes (shared pages counted once)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def cpu_of_tree(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its descendants."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo.extend(child for child, (ppid, _) in stats.items() if ppid == p)
    return total


def timed(page, script: str) -> float:
    """Milliseconds from running ``script`` until the next frame has been rendered (style, layout, paint)."""
    return page.evaluate(
        "new Promise(done => { const t0 = performance.now(); (" + script + ")();"
        " requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0)); })"
    )


def measure_page(html: Path, *, steps: int = 100, step_px: int = 100) -> dict:
    from cdp import Browser

    result: dict = {}
    with Browser.launch() as browser:
        page = browser.new_page(1280, 900)
        page.send("Performance.enable")
        started, cpu_before = time.monotonic(), cpu_of_tree(browser._proc.pid)
        page.navigate(html.resolve().as_uri(), timeout=600)
        result["load_s"] = round(time.monotonic() - started, 2)
        result["load_cpu_s"] = round(cpu_of_tree(browser._proc.pid) - cpu_before, 2)
        nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
        nav = json.loads(nav)
        result["dom_content_loaded_ms"] = round(nav["domContentLoadedEventEnd"])
        result["load_event_ms"] = round(nav["loadEventEnd"])
        result["first_paint_ms"] = page.evaluate(
            "Math.round((performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime)"
        )
        result["cards_on_page"] = page.evaluate("document.querySelectorAll('#grid > .card').length")
        result["count"] = page.evaluate("document.getElementById('count').textContent")
        result["images_loaded_after_load"] = page.evaluate(
            "[...document.images].filter(i => i.complete && i.naturalWidth).length"
        )
        metrics = {m["name"]: m["value"] for m in page.send("Performance.getMetrics")["metrics"]}
        result["dom_nodes"] = int(metrics.get("Nodes", 0))
        result["js_heap_mb"] = round(metrics.get("JSHeapUsedSize", 0) / 1e6, 1)
        result["layout_ms_total"] = round(metrics.get("LayoutDuration", 0) * 1000)
        result["style_ms_total"] = round(metrics.get("RecalcStyleDuration", 0) * 1000)
        result["script_ms_total"] = round(metrics.get("ScriptDuration", 0) * 1000)
        result["browser_pss_mb"] = round(pss_of_tree(browser._proc.pid) / 1e6)

        # Scrolling: one step per frame; the intervals between frames (16.7 ms = 60 fps), and the CPU time
        # the browser spent per frame (which, unlike the intervals, does not grow when the host is busy).
        cpu_before = cpu_of_tree(browser._proc.pid)
        frames = page.evaluate(
            "new Promise(done => { const times = []; let n = 0;"
            " function step(t) { times.push(t); if (n++ >= %d) { done(times.slice(1).map((x, i) => x - times[i])); return; }"
            " window.scrollBy(0, %d); requestAnimationFrame(step); } requestAnimationFrame(step); })" % (steps, step_px)
        )
        result["scroll_cpu_ms_per_frame"] = round((cpu_of_tree(browser._proc.pid) - cpu_before) * 1000 / steps, 1)
        frames.sort()
        result["scroll_frames"] = len(frames)
        result["scroll_frame_ms_median"] = round(statistics.median(frames), 1)
        result["scroll_frame_ms_p95"] = round(frames[int(0.95 * (len(frames) - 1))], 1)
        result["scroll_frame_ms_max"] = round(frames[-1], 1)
        result["scrolled_px"] = page.evaluate("window.scrollY")
        page.evaluate("new Promise(r => setTimeout(r, 1000))")
        result["images_in_view_loaded"] = page.evaluate(
            # (found by hit-testing: geometry queries on all 20,000 cards force each one's skipped layout)
            "(() => { const v = new Set(); for (let y = 5; y < innerHeight; y += 40) for (let x = 5; x < innerWidth;"
            " x += 40) { const c = document.elementFromPoint(x, y); const i = c && c.closest('.card') &&"
            " c.closest('.card').querySelector('img'); if (i) v.add(i); }"
            " return [[...v].filter(i => i.complete && i.naturalWidth).length, v.size]; })()"
        )
        result["images_loaded_after_scroll"] = page.evaluate(
            "[...document.images].filter(i => i.complete && i.naturalWidth).length"
        )
        result["browser_pss_after_scroll_mb"] = round(pss_of_tree(browser._proc.pid) / 1e6)

        def choose(select: str, value: str) -> str:
            return (
                "() => { const s = document.getElementById('%s'); s.value = '%s';"
                " s.dispatchEvent(new Event('change')); }" % (select, value)
            )

        result["next_page_ms"] = round(timed(page, "() => document.querySelector('.pager .next').click()"))
        result["sort_by_score_ms"] = round(timed(page, choose("sort", "score")))
        result["sort_by_index_ms"] = round(timed(page, choose("sort", "index")))
        result["errors_only_ms"] = round(timed(page, choose("show", "errors")))
        result["errors_shown"] = page.evaluate("document.getElementById('count').textContent")
        result["show_all_ms"] = round(timed(page, choose("show", "all")))
        # The search box's filtering (without its 120 ms debounce); the first search reads every card's text.
        for n, words in enumerate(("dog", "dog beach"), 1):
            page.evaluate("document.getElementById('q').value = '%s'" % words)
            result[f"search_{n}_ms"] = round(timed(page, choose("show", "all")))
            result[f"search_{n}_shown"] = page.evaluate("document.getElementById('count').textContent")
        result["errors"] = page.errors()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000, help="records (default 20000)")
    parser.add_argument("--photos", type=int, default=400, help="distinct photos, reused in turn (default 400)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--plain", action="store_true", help="leave content-visibility out of the page's CSS")
    parser.add_argument("--page", metavar="HTML", help="only measure this existing page in the browser")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()

    import capcli.review as review

    if args.page:
        print(json.dumps(measure_page(Path(args.page)), indent=1))
        return

    if args.plain:
        review._CSS = review._CSS.replace("content-visibility:auto;contain-intrinsic-size:auto 290px", "")
    folder = Path(args.keep or tempfile.mkdtemp(prefix="capcli-review-scale-"))
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    photos = make_photos(folder / "photos", args.photos)
    make_records(folder / "out.jsonl", photos, args.n)
    os.chdir(folder)
    records = review.read_output("out.jsonl")
    started = time.monotonic()
    summary = review.write_review(records, "review.html", workers=args.workers or review.DEFAULT_WORKERS)
    result = {
        "records": args.n,
        "workers": args.workers or review.DEFAULT_WORKERS,
        "cpus": os.cpu_count(),
        "build_s": round(time.monotonic() - started, 1),
        "html_mb": round(summary.bytes / 1e6, 1),
        "bytes_per_card": summary.bytes // max(1, args.n),
        "content_visibility": not args.plain,
    }
    result.update(measure_page(folder / "review.html"))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
