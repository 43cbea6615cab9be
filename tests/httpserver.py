"""A threaded HTTP server on 127.0.0.1 (port 0) with per-path behaviours.

A route is a function of the request handler; it writes whatever it likes
(status, headers, a body, raw bytes, or nothing for a while), which is how the
tests stage stalls, drips, lying headers and redirect chains. Every request
is counted per path and its headers kept, so tests can assert how many
attempts the client made and what it sent.
"""

from __future__ import annotations

import collections
import http.server
import ssl
import threading
import time
from collections.abc import Callable

Route = Callable[["Handler"], None]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        with owner.lock:
            owner.hits[path] += 1
            owner.requests.append((path, dict(self.headers)))
        route = owner.routes.get(path)
        if route is None:
            self.send_body(404, b"not found", "text/plain")
        else:
            route(self)

    def send_body(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stalled handlers must not hold up teardown
    request_queue_size = 128  # the default 5 drops bursts of connections: 1 s SYN retries
    owner: LocalServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up on purpose (deadlines, caps): not an error here


class LocalServer:
    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        if tls_context is not None:
            self._server.socket = tls_context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def route(self, path: str) -> Callable[[Route], Route]:
        def register(fn: Route) -> Route:
            self.routes[path] = fn
            return fn

        return register

    def pause(self, seconds: float) -> None:
        """Sleep inside a route, cut short when the server stops."""
        self.stopping.wait(seconds)

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


def drip(handler: Handler, data: bytes, interval: float, server: LocalServer) -> int:
    """Write ``data`` one byte at a time, ``interval`` seconds apart; return how many bytes went out
    before the client hung up (or the server stopped), so a test can tell where the client gave up."""
    for sent, byte in enumerate(data):
        if server.stopping.is_set():
            return sent
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:  # the client closed the connection
            return sent
        time.sleep(interval)
    return len(data)
