"""``capcli url-list`` end to end against a local server, with a fake captioner.

The fake captions an image by its mean brightness, so each record can be
matched to the image its URL serves: order and pairing are checked, not just
counts. The real-bundle path is the same pipeline as ``capcli caption``.
"""

from __future__ import annotations

import csv
import io
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FakeCaptioner
from httpserver import Handler, LocalServer
from PIL import Image

from capcli import Model, captioning
from capcli.cli import main


@dataclass(frozen=True)
class Pre:
    size: tuple[int, int] = (8, 8)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    resize: str = "squash"
    interpolation: str = "bilinear"


@pytest.fixture(autouse=True)
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    captioner = FakeCaptioner(name=lambda x: f"Level {round(float(x.mean()) * 255)}.")
    monkeypatch.setattr(captioning, "load_model", lambda settings: Model(captioner, Pre()))


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


def png(level: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), level).save(out, "PNG")
    return out.getvalue()


def serve_levels(server: LocalServer, levels: list[int], delay=lambda i: 0.0) -> list[str]:
    for i, level in enumerate(levels):
        body, wait = png(level), delay(i)

        def route(h: Handler, body: bytes = body, wait: float = wait) -> None:
            server.pause(wait)
            h.send_body(200, body, "image/png")

        server.routes[f"/{i}.png"] = route
    return [server.url(f"/{i}.png") for i in range(len(levels))]


def url_list(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, ["url-list", *args], input=input)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_plain_list_gives_one_record_per_url_in_order(server: LocalServer) -> None:
    urls = serve_levels(server, [10, 20, 30])
    server.routes["/login"] = lambda h: h.send_body(200, b"<html>log in</html>", "text/html")
    listing = "\r\n".join(
        [
            "\ufeff# photos",
            urls[0],
            "",
            server.url("/missing.jpg"),
            urls[1],
            server.url("/login"),
            "ftp://example.com/x.jpg",
            urls[2],
        ]
    ).encode()
    result = url_list("-", "--allow-private-network", "--retries", "0", input=listing)
    assert result.exit_code == 3, result.output
    got = records(result.stdout)
    assert [r["index"] for r in got] == list(range(6))
    assert [r["source"] for r in got] == [
        urls[0],
        server.url("/missing.jpg"),
        urls[1],
        server.url("/login"),
        "ftp://example.com/x.jpg",
        urls[2],
    ]
    assert [r["caption"] for r in got] == ["Level 10.", None, "Level 20.", None, None, "Level 30."]
    assert [r.get("error_kind") for r in got] == [None, "http_error", None, "not_an_image", "invalid_url", None]
    assert got[3]["error"] == "got text/html, not an image"
    assert "3 captioned, 3 failed" in result.stderr


def test_private_addresses_are_refused_by_default(server: LocalServer) -> None:
    urls = serve_levels(server, [5, 6])
    result = url_list("-", input="\n".join(urls + ["http://169.254.169.254/latest/meta-data/"]).encode())
    assert result.exit_code == 3
    got = records(result.stdout)
    assert {r["error_kind"] for r in got} == {"blocked_address"}
    assert "loopback" in got[0]["error"] and "link-local" in got[2]["error"]
    assert sum(server.hits.values()) == 0


def test_csv_list_passes_the_id_column_through(server: LocalServer, tmp_path) -> None:
    urls = serve_levels(server, [40, 50])
    listing = tmp_path / "photos.csv"
    listing.write_text(f"sku,image_url\r\nA-1,{urls[0]}\r\nB-2,\r\nC-3,{urls[1]}\r\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    result = url_list(
        str(listing), "--url-col", "image_url", "--id-col", "sku", "--allow-private-network", "-o", str(out)
    )
    assert result.exit_code == 3, result.output
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["source"], r["status"], r["caption"]) for r in rows] == [
        ("A-1", urls[0], "ok", "Level 40."),
        ("B-2", "line 3", "error", ""),
        ("C-3", urls[1], "ok", "Level 50."),
    ]
    assert rows[1]["error_kind"] == "invalid_url"


def test_jsonl_list_keeps_json_ids(server: LocalServer) -> None:
    urls = serve_levels(server, [60])
    listing = json.dumps({"url": urls[0], "id": 17}).encode() + b"\n"
    result = url_list("-", "--id-col", "id", "--allow-private-network", input=listing)
    assert result.exit_code == 0, result.output
    (record,) = records(result.stdout)
    assert record["id"] == 17 and record["caption"] == "Level 60."


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--url-col", "link", "--input-format", "csv"], "no column 'link'"),
        (["--url-col", "url", "--input-format", "lines"], "need a CSV"),
        (["--max-bytes", "lots"], "not a size"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str) -> None:
    result = url_list("-", *args, input=b"url\nhttp://a.example/x.jpg\n")
    assert result.exit_code == 2
    assert needle in result.output


def test_max_bytes_reaches_the_downloader(server: LocalServer) -> None:
    urls = serve_levels(server, [70])
    result = url_list("-", "--max-bytes", "10B", "--allow-private-network", input=urls[0].encode())
    assert records(result.stdout)[0]["error_kind"] == "too_large"


def test_order_and_pairing_hold_under_random_latency(server: LocalServer) -> None:
    rng = random.Random(7)
    levels = [rng.randrange(256) for _ in range(40)]
    delays = [rng.uniform(0, 0.06) for _ in levels]
    urls = serve_levels(server, levels, delay=lambda i: delays[i])
    result = url_list(
        "-", "--allow-private-network", "--workers", "8", "--batch-size", "4", input="\n".join(urls).encode()
    )
    assert result.exit_code == 0, result.output
    got = records(result.stdout)
    assert [r["source"] for r in got] == urls
    assert [r["caption"] for r in got] == [f"Level {v}." for v in levels]


def test_download_latency_overlaps(server: LocalServer) -> None:
    """Downloads run at once: each response waits until 8 requests are in flight together, which
    fetching one URL after another would never reach (event-based, no wall-clock bound)."""
    lock = threading.Lock()
    in_flight = most = 0
    overlapping = threading.Event()
    body = png(9)

    def route(h: Handler) -> None:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
            if in_flight >= 8:
                overlapping.set()
        overlapping.wait(5.0)
        with lock:
            in_flight -= 1
        h.send_body(200, body, "image/png")

    for i in range(24):
        server.routes[f"/{i}.png"] = route
    urls = [server.url(f"/{i}.png") for i in range(24)]
    result = url_list("-", "--allow-private-network", input="\n".join(urls).encode())  # 16 workers
    assert result.exit_code == 0, result.output
    assert overlapping.is_set() and most >= 8, most
    assert [r["caption"] for r in records(result.stdout)] == ["Level 9."] * 24


def test_caption_command_fetches_urls_through_the_same_guard(server: LocalServer) -> None:
    urls = serve_levels(server, [80])
    result = CliRunner().invoke(main, ["caption", urls[0]])
    assert result.exit_code == 3
    assert records(result.stdout)[0]["error_kind"] == "blocked_address"
    assert server.hits["/0.png"] == 0


def test_resume_with_repeated_urls_restores_one_record_per_line(server: LocalServer, tmp_path) -> None:
    urls = serve_levels(server, [10, 20, 30]) * 4  # 12 lines, each URL four times
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out.jsonl"
    assert url_list(str(listing), "--allow-private-network", "-o", str(out)).exit_code == 0
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:5]))  # a run cut after 5 records
    result = url_list(str(listing), "--allow-private-network", "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert "7 captioned, 0 failed, 5 skipped" in result.stderr
    got = records(out.read_text())
    assert [r["index"] for r in got] == list(range(12)) and [r["source"] for r in got] == urls
    assert [r["caption"] for r in got] == [f"Level {v}." for v in [10, 20, 30] * 4]


def test_save_images_keeps_the_bytes_the_server_sent_under_safe_names(server: LocalServer, tmp_path) -> None:
    photo = (Path(__file__).resolve().parents[1] / "examples" / "cat.jpg").read_bytes()
    level = png(70)
    server.routes["/pets/My%20Cat%20%C3%A9t%C3%A9.jpeg"] = lambda h: h.send_body(200, photo, "image/jpeg")
    server.routes["/raw"] = lambda h: h.send_body(200, level, "application/octet-stream")  # no suffix, no label
    server.routes["/a/..%2F..%2Fescape.gif"] = lambda h: h.send_body(200, level, "image/png")  # PNG bytes
    server.routes["/broken.jpg"] = lambda h: h.send_body(200, photo[:200], "image/jpeg")
    urls = [
        server.url("/pets/My%20Cat%20%C3%A9t%C3%A9.jpeg?size=large"),
        server.url("/raw"),
        server.url("/a/..%2F..%2Fescape.gif"),
        server.url("/missing.png"),
        server.url("/broken.jpg"),
        server.url("/raw"),  # the same URL twice: two inputs, two files
    ]
    saved_dir = tmp_path / "saved"
    out = tmp_path / "out.csv"
    args = ("-", "--allow-private-network", "--retries", "0", "--save-images", str(saved_dir))
    result = url_list(*args, "-o", str(out), input="\n".join(urls).encode())
    assert result.exit_code == 3, result.output
    expected = {
        0: "000000-My_Cat_ete.jpg",
        1: "000001-raw.png",
        2: "000002-escape.png",  # named by the bytes' format, never outside DIR
        5: "000005-raw.png",
    }
    assert sorted(p.name for p in saved_dir.iterdir()) == sorted(expected.values())  # failed ones: no file
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["saved"] for r in rows] == [str(saved_dir / expected[i]) if i in expected else "" for i in range(6)]
    assert (saved_dir / expected[0]).read_bytes() == photo  # byte-identical, EXIF and all
    assert all((saved_dir / expected[i]).read_bytes() == level for i in (1, 2, 5))
    result = url_list(*args, input=urls[0].encode())  # JSONL: the same field
    assert records(result.stdout)[0]["saved"] == str(saved_dir / expected[0])
