"""Throughput of ``capcli url-list`` against captioning the same images from disk.

A local HTTP server adds a fixed latency (100 ms by default) to every
response and serves real photos; the same photos are then captioned from
disk. With enough download workers the latency hides behind inference and
the two rates are close: issue 4 asks for url-list >= 80% of the disk rate.

    python benchmarks/bench_urllist.py --model models/f8k -n 200

Rates are taken from capcli's own summary line (captioning time, model
loading excluded); wall times including start-up are printed too. Both runs
must give identical captions, which the script checks.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "flickr8k" / "images"
_SUMMARY = re.compile(r"(\d+) captioned, (\d+) failed.* in ([\d.]+) s, ([\d.]+) images/s")


def serve(photos: dict[str, bytes], latency: float) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency)
            body = photos.get(self.path.lstrip("/"))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg" if body else "text/plain")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default 5 drops bursts of connections: 1 s SYN retries

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(args: list[str], stdin: bytes | None = None) -> tuple[float, float, list[dict]]:
    """(wall seconds, captioning images/s, records) of one capcli run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "capcli", *args, "-o", str(out)], input=stdin, capture_output=True, cwd=REPO
        )
        wall = time.monotonic() - start
        stderr = proc.stderr.decode(errors="replace")
        match = _SUMMARY.search(stderr)
        if proc.returncode != 0 or not match:
            sys.exit(f"capcli {args[0]} failed (exit {proc.returncode}):\n{stderr}")
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return wall, float(match.group(4)), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of JPEGs")
    parser.add_argument("-n", "--count", type=int, default=40, help="images to caption")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to each response")
    parser.add_argument("--workers", type=int, default=None, help="url-list download workers [its default]")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the median rate counts")
    opts = parser.parse_args()

    names = sorted(p.name for p in opts.images.glob("*.jpg"))[: opts.count]
    if not names:
        sys.exit(f"no .jpg files in {opts.images}")
    photos = {name: (opts.images / name).read_bytes() for name in names}
    server = serve(photos, opts.latency)
    base = server.server_address[1]
    urls = [f"http://127.0.0.1:{base}/{name}" for name in names]
    common = [
        "--model",
        opts.model,
        "--device",
        opts.device,
        "--batch-size",
        str(opts.batch_size),
        "--beam",
        str(opts.beam),
    ]
    url_args = ["url-list", "-", "--allow-private-network", *common]
    if opts.workers:
        url_args += ["--workers", str(opts.workers)]
    paths = "\n".join(str(opts.images / name) for name in names).encode()

    disk_runs, url_runs = [], []
    for _ in range(opts.repeat):  # interleaved, so drift in machine load hits both
        disk_runs.append(run(["caption", "-", *common], stdin=paths))
        url_runs.append(run(url_args, stdin="\n".join(urls).encode()))
    server.shutdown()

    disk_captions = [r["caption"] for r in disk_runs[-1][2]]
    url_records = url_runs[-1][2]
    failed = [r for r in url_records if r["status"] != "ok"]
    same = sum(r["caption"] == c for r, c in zip(url_records, disk_captions))
    disk_rate = statistics.median(rate for _, rate, _ in disk_runs)
    url_rate = statistics.median(rate for _, rate, _ in url_runs)
    print(
        f"images: {len(names)} from {opts.images}; latency {opts.latency * 1000:.0f} ms per response; "
        f"batch {opts.batch_size}, beam {opts.beam}, device {opts.device}; "
        f"url-list workers {opts.workers or 'default'}; median of {opts.repeat}"
    )
    print(f"disk     : {disk_rate:7.1f} images/s  (wall {statistics.median(w for w, _, _ in disk_runs):.2f} s)")
    print(f"url-list : {url_rate:7.1f} images/s  (wall {statistics.median(w for w, _, _ in url_runs):.2f} s)")
    print(f"ratio    : {url_rate / disk_rate:.2f}  (url-list / disk; target >= 0.80)")
    print(f"captions : {same}/{len(names)} identical, {len(failed)} download errors")
    if failed or same != len(names):
        sys.exit(1)


if __name__ == "__main__":
    main()
