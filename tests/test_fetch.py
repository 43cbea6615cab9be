"""capcli.fetch against a threaded HTTP(S) server on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import queue
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from httpserver import Handler, LocalServer, drip
from PIL import Image

from capcli import __version__
from capcli.errors import ItemError
from capcli.fetch import FetchOptions, fetch_bytes, parse_url

PUBLIC_IP = "93.184.216.34"  # what the guard sees; the test connector reaches 127.0.0.1


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG")
    return out.getvalue()


IMAGE = png()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def opts() -> FetchOptions:
    # Private network allowed (the server is on loopback), tiny waits everywhere.
    return FetchOptions(
        timeout_connect=1.0,
        timeout_read=1.0,
        deadline=3.0,
        retries=2,
        backoff_base=0.001,
        backoff_max=0.005,
        retry_after_cap=0.2,
        allow_private_network=True,
    )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses fetch_bytes takes between attempts, recorded instead of slept: a test checks the
    wait asked for, not the clock (other threads, e.g. the server's, still sleep for real)."""
    asked: list[float] = []
    caller, sleep = threading.get_ident(), time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: asked.append(s) if threading.get_ident() == caller else sleep(s))
    return asked


def fails(url: str, options: FetchOptions, kind: str) -> ItemError:
    with pytest.raises(ItemError) as info:
        fetch_bytes(url, options)
    assert info.value.kind == kind, str(info.value)
    return info.value


def test_200_returns_body_and_identifies_capcli(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/cat.png"] = lambda h: h.send_body(200, IMAGE, "image/png")
    assert fetch_bytes(server.url("/cat.png?size=8"), opts) == IMAGE
    ((_path, headers),) = server.requests
    assert headers["User-Agent"].startswith(f"capcli/{__version__} (+https://")
    assert headers["Host"] == f"127.0.0.1:{server.port}"


def test_image_is_judged_by_content_not_label(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/x"] = lambda h: h.send_body(200, IMAGE, "text/plain")
    assert fetch_bytes(server.url("/x"), opts) == IMAGE


def test_404_is_not_retried(server: LocalServer, opts: FetchOptions) -> None:
    err = fails(server.url("/missing"), opts, "http_error")
    assert "404" in str(err)
    assert server.hits["/missing"] == 1


def test_500_then_200_is_retried(server: LocalServer, opts: FetchOptions) -> None:
    @server.route("/flaky")
    def flaky(h: Handler) -> None:
        if server.hits["/flaky"] == 1:
            h.send_body(500, b"oops", "text/plain")
        else:
            h.send_body(200, IMAGE, "image/png")

    assert fetch_bytes(server.url("/flaky"), opts) == IMAGE
    assert server.hits["/flaky"] == 2


def test_persistent_503_gives_up_after_retries(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/down"] = lambda h: h.send_body(503, b"busy", "text/plain")
    err = fails(server.url("/down"), replace(opts, retries=3), "http_error")
    assert "503" in str(err)
    assert server.hits["/down"] == 4


def test_429_waits_for_retry_after_up_to_the_cap(server: LocalServer, opts: FetchOptions, waits: list[float]) -> None:
    @server.route("/limited")
    def limited(h: Handler) -> None:
        if server.hits["/limited"] == 1:
            h.send_body(429, b"slow down", "text/plain", Retry_After="1")
        else:
            h.send_body(200, IMAGE, "image/png")

    assert fetch_bytes(server.url("/limited"), opts) == IMAGE
    assert server.hits["/limited"] == 2
    assert waits == [0.2]  # Retry-After 1 s, capped at 0.2 s; not the 1 ms backoff


def test_retry_after_past_the_deadline_fails_at_once(
    server: LocalServer, opts: FetchOptions, waits: list[float]
) -> None:
    server.routes["/limited"] = lambda h: h.send_body(429, b"", "text/plain", Retry_After="60")
    err = fails(server.url("/limited"), replace(opts, retry_after_cap=60.0), "http_error")
    assert "429" in str(err)
    assert server.hits["/limited"] == 1
    assert waits == []  # no wait at all: 60 s would overrun the 3 s deadline


def test_connection_refused(opts: FetchOptions) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fails(f"http://127.0.0.1:{port}/x", replace(opts, retries=1), "connect_error")


def test_stall_before_headers_times_out(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/stall"] = lambda h: server.pause(10)
    err = fails(server.url("/stall"), replace(opts, timeout_read=0.3, retries=1), "timeout")
    # The 0.3 s read timeout ended both attempts, not the 3 s deadline (that would say "deadline" and
    # leave no time for a second attempt): a timeout is transient, retried once.
    assert server.hits["/stall"] == 2
    assert str(err) == "no data for 0.3 s"


def test_slow_drip_cannot_hold_an_item_past_the_deadline(server: LocalServer, opts: FetchOptions) -> None:
    sent: queue.Queue[int] = queue.Queue()  # body bytes out before the client hung up

    @server.route("/drip")
    def dripping(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        sent.put(drip(h, IMAGE * 20, 0.05, server))  # each byte well inside the read timeout; 1000 take 50 s

    err = fails(server.url("/drip"), replace(opts, deadline=0.6), "timeout")
    assert "deadline" in str(err)
    assert sent.get(timeout=30) < 1000  # the deadline cut the body short: the client hung up mid-body


def test_dripping_headers_hit_the_deadline_too(server: LocalServer, opts: FetchOptions) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
    sent: queue.Queue[int] = queue.Queue()  # header bytes out before the client hung up

    @server.route("/drip-headers")
    def dripping(h: Handler) -> None:
        sent.put(drip(h, head, 0.05, server))

    err = fails(server.url("/drip-headers"), replace(opts, deadline=0.6), "timeout")
    assert "deadline" in str(err)
    assert sent.get(timeout=30) < len(head)  # the client hung up before the headers ended


def test_oversize_by_content_length(server: LocalServer, opts: FetchOptions) -> None:
    @server.route("/big")
    def big(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(50_000_000))
        h.end_headers()
        server.pause(5)  # never sends the body: a client waiting for it would end with a read timeout

    err = fails(server.url("/big"), replace(opts, max_bytes=1000), "too_large")  # the header alone decided
    assert str(err) == "Content-Length 50000000 is larger than the 1000-byte limit (--max-bytes)"
    assert server.hits["/big"] == 1  # not retried


def _chunked(h: Handler, total: int, extra_headers: dict[str, str] | None = None) -> None:
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    for name, value in (extra_headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    sent = 0
    while sent < total:
        h.wfile.write(b"400\r\n" + b"x" * 0x400 + b"\r\n")
        sent += 0x400
    h.wfile.write(b"0\r\n\r\n")


def test_oversize_by_chunked_stream(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/stream"] = lambda h: _chunked(h, 200_000)
    fails(server.url("/stream"), replace(opts, max_bytes=10_000), "too_large")


def test_lying_content_length_does_not_bypass_the_cap(server: LocalServer, opts: FetchOptions) -> None:
    # Claims 100 bytes, then streams 200 kB chunked (chunked framing wins).
    server.routes["/liar"] = lambda h: _chunked(h, 200_000, {"Content-Length": "100"})
    fails(server.url("/liar"), replace(opts, max_bytes=10_000), "too_large")


def test_body_shorter_than_content_length_is_a_retried_protocol_error(server: LocalServer, opts: FetchOptions) -> None:
    @server.route("/short")
    def short(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(IMAGE)
        h.close_connection = True

    err = fails(server.url("/short"), opts, "protocol_error")
    assert "closed" in str(err)
    assert server.hits["/short"] == 3


def test_compression_bomb_stops_at_the_cap(server: LocalServer, opts: FetchOptions) -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)
    assert len(bomb) < 100_000
    server.routes["/bomb"] = lambda h: h.send_body(200, bomb, "image/png", Content_Encoding="gzip")
    fails(server.url("/bomb"), replace(opts, max_bytes=1_000_000), "too_large")


def test_gzip_encoded_image_is_decoded(server: LocalServer, opts: FetchOptions) -> None:
    body = gzip.compress(IMAGE)
    server.routes["/gz"] = lambda h: h.send_body(200, body, "image/png", Content_Encoding="gzip")
    assert fetch_bytes(server.url("/gz"), opts) == IMAGE


def test_corrupt_gzip_is_a_protocol_error_not_retried(server: LocalServer, opts: FetchOptions) -> None:
    body = gzip.compress(IMAGE)[:12] + b"garbage" * 10
    server.routes["/bad"] = lambda h: h.send_body(200, body, "image/png", Content_Encoding="gzip")
    fails(server.url("/bad"), opts, "protocol_error")
    assert server.hits["/bad"] == 1


def test_redirects_are_followed(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/a"] = lambda h: h.send_body(302, b"", "text/plain", Location="/b")
    server.routes["/b"] = lambda h: h.send_body(301, b"", "text/plain", Location=server.url("/c.png"))
    server.routes["/c.png"] = lambda h: h.send_body(200, IMAGE, "image/png")
    assert fetch_bytes(server.url("/a"), opts) == IMAGE


def test_redirect_loop(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/loop"] = lambda h: h.send_body(302, b"", "text/plain", Location="/loop")
    fails(server.url("/loop"), replace(opts, max_redirects=3), "too_many_redirects")
    assert server.hits["/loop"] == 4  # the first request and three redirects


def test_redirect_to_another_scheme_is_refused(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/r"] = lambda h: h.send_body(302, b"", "text/plain", Location="file:///etc/passwd")
    err = fails(server.url("/r"), opts, "invalid_url")
    assert "file" in str(err)


class PublicFacade:
    """Resolver + connector: named hosts 'resolve' to addresses, and the one
    public address is really our loopback server. The guard stays on and sees
    only what the resolver says, exactly as with real DNS."""

    def __init__(self, server: LocalServer, names: dict[str, list[str]]) -> None:
        self.server = server
        self.names = names
        self.lookups: list[str] = []
        self.connects: list[str] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.names[host]

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        self.connects.append(address)
        if address == PUBLIC_IP:
            return socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout)
        raise AssertionError(f"the guard let a connection to {address} through")

    def options(self, base: FetchOptions) -> FetchOptions:
        return replace(base, allow_private_network=False, resolver=self.resolve, connector=self.connect)


def test_https_to_a_plain_http_port_is_a_tls_error(server: LocalServer, opts: FetchOptions) -> None:
    server.routes["/a.png"] = lambda h: h.send_body(200, IMAGE, "image/png")
    err = fails(server.url("/a.png", scheme="https"), opts, "tls_error")
    assert str(err).startswith("TLS handshake failed")
    assert server.hits["/a.png"] == 0  # the handshake failed: no request was made, none retried


def test_facade_reaches_the_server_with_the_guard_on(server: LocalServer, opts: FetchOptions) -> None:
    facade = PublicFacade(server, {"images.example": [PUBLIC_IP]})
    server.routes["/ok.png"] = lambda h: h.send_body(200, IMAGE, "image/png")
    url = f"http://images.example:{server.port}/ok.png"
    assert fetch_bytes(url, facade.options(opts)) == IMAGE
    assert server.requests[0][1]["Host"] == f"images.example:{server.port}"


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{port}/secret",
        "http://internal.example:{port}/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433:{port}/secret",
    ],
)
def test_redirect_to_a_private_address_is_blocked(server: LocalServer, opts: FetchOptions, location: str) -> None:
    facade = PublicFacade(server, {"images.example": [PUBLIC_IP], "internal.example": ["10.0.0.7"]})
    target = location.format(port=server.port)
    server.routes["/start"] = lambda h: h.send_body(302, b"", "text/plain", Location=target)
    server.routes["/secret"] = lambda h: h.send_body(200, IMAGE, "image/png")
    err = fails(f"http://images.example:{server.port}/start", facade.options(opts), "blocked_address")
    assert "--allow-private-network" in str(err)
    assert server.hits["/start"] == 1
    assert server.hits["/secret"] == 0
    assert facade.connects == [PUBLIC_IP]


def test_connects_to_the_checked_address_not_a_second_lookup(server: LocalServer, opts: FetchOptions) -> None:
    # A rebinding resolver: public on the first answer, loopback afterwards.
    answers = iter([[PUBLIC_IP], ["127.0.0.1"], ["127.0.0.1"]])
    facade = PublicFacade(server, {})
    facade.resolve = lambda host, port: (facade.lookups.append(host), next(answers))[1]  # type: ignore[method-assign]
    server.routes["/x.png"] = lambda h: h.send_body(200, IMAGE, "image/png")
    assert fetch_bytes(f"http://rebind.example:{server.port}/x.png", facade.options(opts)) == IMAGE
    assert facade.lookups == ["rebind.example"]
    assert facade.connects == [PUBLIC_IP]


def test_html_body_names_the_type_received(server: LocalServer, opts: FetchOptions) -> None:
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    server.routes["/login"] = lambda h: h.send_body(200, page, "text/html; charset=utf-8")
    server.routes["/fake.jpg"] = lambda h: h.send_body(200, page, "image/jpeg")
    err = fails(server.url("/login"), opts, "not_an_image")
    assert str(err) == "got text/html, not an image"
    err = fails(server.url("/fake.jpg"), opts, "not_an_image")
    assert str(err) == "got HTML labelled image/jpeg, not an image"
    assert server.hits["/login"] == 1  # undecodable bodies are not retried


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://example.com/a.jpg", "ftp"),
        ("file:///etc/passwd", "file"),
        ("example.com/a.jpg", "no scheme"),
        ("http:///a.jpg", "no host"),
        ("http://user:pw@example.com/a.jpg", "credentials"),
        ("http://example.com/a\r\nX-Injected: 1", "control characters"),
        ("http://exa mple.com/a.jpg", "space"),
        ("http://example.com:99999/a.jpg", "malformed"),
        ("http://0x7g.1/", "not a valid IPv4"),  # ends in a number: must be an address
        ("http://1.2.3.256/", "not a valid IPv4"),
    ],
)
def test_invalid_urls_are_refused_without_network(opts: FetchOptions, url: str, needle: str) -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("no lookup for an invalid URL")

    options = replace(opts, allow_private_network=False, resolver=no_dns)
    err = fails(url, options, "invalid_url")
    assert needle in str(err)


def test_parse_url_escapes_and_keeps_query() -> None:
    target = parse_url("http://Bücher.Example/ä b%20c.jpg?q=1&r=2#frag")
    assert target.host == "xn--bcher-kva.example"
    assert target.host_header == "xn--bcher-kva.example"
    assert target.path == "/%C3%A4%20b%20c.jpg?q=1&r=2"
    assert parse_url("https://[::1]:8443/x").host_header == "[::1]:8443"


def test_order_preserved_under_random_latency(server: LocalServer, opts: FetchOptions) -> None:
    rng = random.Random(4)
    images = [png((i * 8, 255 - i * 8, 40)) for i in range(24)]
    delays = [rng.uniform(0.0, 0.08) for _ in images]
    for i, (body, delay) in enumerate(zip(images, delays)):

        def route(h: Handler, body: bytes = body, delay: float = delay) -> None:
            server.pause(delay)
            h.send_body(200, body, "image/png")

        server.routes[f"/{i}.png"] = route
    urls = [server.url(f"/{i}.png") for i in range(len(images))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda u: fetch_bytes(u, opts), urls))
    assert got == images


def _self_signed(tmp: Path, host: str) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=DNS:{host}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_pins_the_address_but_verifies_the_host_name(tmp_path: Path, opts: FetchOptions) -> None:
    cert, key = _self_signed(tmp_path, "images.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = LocalServer(context)
    try:
        server.routes["/a.png"] = lambda h: h.send_body(200, IMAGE, "image/png")
        names = {"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]}
        options = replace(opts, ca_file=str(cert), resolver=lambda host, port: names[host], retries=0)
        url = server.url("/a.png", host="images.example", scheme="https")
        assert fetch_bytes(url, options) == IMAGE
        # Same address, but the certificate is not for this name.
        wrong = server.url("/a.png", host="other.example", scheme="https")
        err = fails(wrong, options, "tls_error")
        assert "other.example" in str(err) or "mismatch" in str(err)
    finally:
        server.close()
