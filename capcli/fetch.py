"""URL -> image bytes, politely and safely.

``fetch_bytes(url, options)`` is the one public entry; it is thread-safe and
keeps no state between calls beyond a shared TLS context and the deadline
watchdog, so the pipeline's reader pool calls it from many threads at once.

Why plain ``http.client`` over our own socket rather than ``requests``: the
network guard must connect to exactly the address it checked while TLS still
sends SNI for, and verifies the certificate against, the host name. Owning the
socket makes that one line (``wrap_socket(sock, server_hostname=host)``)
instead of an override of a connection pool's internals, and it lets the
per-item deadline watchdog shut the very socket a stalled read is blocked on.
Environment proxies are therefore not used: through a proxy, the guard could
not know which address is reached.
"""

from __future__ import annotations

import email.utils
import functools
import heapq
import http.client
import io
import itertools
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from capcli import __version__
from capcli.errors import ItemError
from capcli.netguard import IPAddress, Resolver, checked_addresses

PROJECT_URL = "https://github.com/capcli/capcli"
USER_AGENT = f"capcli/{__version__} (+{PROJECT_URL})"
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024

# (address, port, timeout) -> connected socket; tests inject one to reach a
# local server while the guard sees a public address.
Connector = Callable[[str, int, float], socket.socket]


@dataclass(frozen=True)
class FetchOptions:
    """Limits and policy for one download; every field has a sensible default."""

    timeout_connect: float = 10.0  # seconds per connection attempt
    timeout_read: float = 10.0  # seconds of silence tolerated on a socket
    deadline: float = 30.0  # wall-clock seconds per item: all hops, retries, waits
    max_bytes: int = 20_000_000  # after Content-Encoding is undone
    retries: int = 2  # extra attempts after a transient failure
    max_redirects: int = 5
    allow_private_network: bool = False
    resolver: Resolver | None = None  # None: the system resolver
    user_agent: str = USER_AGENT
    backoff_base: float = 0.5  # first retry waits about this long, then doubles
    backoff_max: float = 8.0
    retry_after_cap: float = 20.0  # longest Retry-After honoured
    ca_file: str | None = None  # None: certifi's bundle when installed, else the system's
    connector: Connector | None = None  # None: socket.create_connection


class _Transient(Exception):
    """A failure worth another attempt (timeouts, resets, 429, 5xx)."""

    def __init__(self, error: ItemError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Body:
    data: bytes
    content_type: str | None


def fetch_bytes(url: str, options: FetchOptions | None = None) -> bytes:
    """Download one image URL and return its (content-decoded) body.

    Raises ItemError with kind ``invalid_url``, ``blocked_address``,
    ``dns_error``, ``connect_error``, ``tls_error``, ``timeout``,
    ``protocol_error``, ``http_error``, ``too_many_redirects``, ``too_large``
    or ``not_an_image``.
    """
    opts = options or FetchOptions()
    deadline = time.monotonic() + opts.deadline
    budget = _RetryBudget(opts, deadline)
    current = url
    for _hop in range(opts.max_redirects + 1):
        while True:
            try:
                outcome = _attempt(current, opts, deadline)
                break
            except _Transient as exc:
                budget.wait_or_raise(exc)
        if isinstance(outcome, _Body):
            _require_image(outcome.data, outcome.content_type)
            return outcome.data
        current = outcome  # a redirect target, checked by the next _attempt
    raise ItemError("too_many_redirects", f"more than {opts.max_redirects} redirects (last to {current})")


class _RetryBudget:
    """Counts retries for one item and sleeps the backoff between them."""

    def __init__(self, opts: FetchOptions, deadline: float) -> None:
        self.opts = opts
        self.deadline = deadline
        self.used = 0

    def wait_or_raise(self, exc: _Transient) -> None:
        if self.used >= self.opts.retries:
            raise exc.error
        step = min(self.opts.backoff_max, self.opts.backoff_base * 2**self.used)
        delay = random.uniform(step / 2, step)  # jitter: workers do not retry in lockstep
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.opts.retry_after_cap))
        if time.monotonic() + delay >= self.deadline:
            raise exc.error  # waiting would overrun the item's deadline anyway
        self.used += 1
        time.sleep(delay)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # IDNA-encoded, lower case, no brackets
    port: int
    host_header: str
    path: str  # request target: path and query, percent-encoded ASCII


def parse_url(url: str) -> _Target:
    """Validate an http(s) URL; ItemError ``invalid_url`` says what is wrong."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ItemError("invalid_url", "URL contains control characters")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the list (surrogateescape)
        raise ItemError("invalid_url", "URL is not valid UTF-8") from None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ItemError("invalid_url", f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}:" if scheme else "no scheme"
        raise ItemError("invalid_url", f"only http and https URLs are fetched, not {shown}")
    if parts.username is not None or parts.password is not None:
        raise ItemError("invalid_url", "URLs with credentials are not supported")
    if not parts.hostname:
        raise ItemError("invalid_url", "URL has no host")
    if " " in parts.hostname:
        raise ItemError("invalid_url", "host name contains a space")
    try:
        host = parts.hostname.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ItemError("invalid_url", f"bad host name {parts.hostname!r}: {exc}") from exc
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # Keep what is already escaped; escape the rest (non-ASCII, spaces, quotes).
    path = quote(path, safe="!$&'()*+,;=:@/?%-._~[]")
    return _Target(scheme, host, port, host_header, path)


def _attempt(url: str, opts: FetchOptions, deadline: float) -> _Body | str:
    """One request: the body, or the URL a redirect points to."""
    target = parse_url(url)
    addresses = checked_addresses(
        target.host,
        target.port,
        allow_private_network=opts.allow_private_network,
        resolver=opts.resolver,
    )
    sock = _connect(addresses, target.port, opts, deadline)
    watch = _WATCHDOG.watch(deadline, sock)
    try:
        outcome = _exchange(sock, target, url, opts, watch)
    except ssl.SSLCertVerificationError as exc:
        raise ItemError("tls_error", f"certificate rejected: {exc.verify_message}") from exc
    except zlib.error as exc:  # the server's fault: not retried
        raise ItemError("protocol_error", f"corrupt compressed body: {exc}") from exc
    except (ItemError, _Transient):
        if watch.fired:
            raise _deadline_error(opts) from None
        raise
    except TimeoutError as exc:
        if watch.fired:
            raise _deadline_error(opts) from None
        raise _Transient(ItemError("timeout", f"no data for {opts.timeout_read:g} s")) from exc
    except (OSError, http.client.HTTPException) as exc:
        if watch.fired:
            raise _deadline_error(opts) from None
        kind = "protocol_error" if isinstance(exc, http.client.HTTPException) else "connect_error"
        raise _Transient(ItemError(kind, _describe_exc(exc))) from exc
    finally:
        watch.cancel()  # before close: the watchdog never touches a closed socket
        sock.close()
    if watch.fired:  # a read cut short by the watchdog can look like a clean end
        raise _deadline_error(opts)
    return outcome


def _exchange(sock: socket.socket, target: _Target, url: str, opts: FetchOptions, watch: _Watch) -> _Body | str:
    if target.scheme == "https":
        sock = _start_tls(sock, target.host, opts, watch)
    response = _request(sock, target, opts)
    if response.status in _REDIRECTS:
        location = response.getheader("Location")
        if not location:
            raise ItemError("http_error", f"HTTP {response.status} redirect without Location")
        return urljoin(url, location.strip())
    if response.status == 429 or response.status >= 500:
        raise _Transient(_status_error(response), _retry_after(response))
    if not 200 <= response.status < 300:
        raise _status_error(response)
    return _Body(_read_body(response, opts.max_bytes), response.getheader("Content-Type"))


def _connect(addresses: list[IPAddress], port: int, opts: FetchOptions, deadline: float) -> socket.socket:
    connect = opts.connector or _create_connection
    error: ItemError | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _deadline_error(opts)
        try:
            sock = connect(str(address), port, min(opts.timeout_connect, remaining))
        except TimeoutError:
            error = ItemError("timeout", f"connecting to {address} port {port} timed out")
        except OSError as exc:
            error = ItemError("connect_error", f"{address} port {port}: {_describe_exc(exc)}")
        else:
            sock.settimeout(opts.timeout_read)
            return sock
    assert error is not None  # addresses is never empty
    raise _Transient(error)


def _create_connection(address: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout)


def _start_tls(sock: socket.socket, host: str, opts: FetchOptions, watch: _Watch) -> socket.socket:
    # Handshake after the watchdog holds the TLS socket: wrap_socket detaches
    # the plain one, which could then no longer be shut from the watchdog.
    tls = _tls_context(opts.ca_file).wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    watch.retarget(tls)
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError:
        raise
    except ssl.SSLError as exc:  # e.g. a plain-HTTP server on an https:// port: "wrong version number"
        raise ItemError("tls_error", f"TLS handshake failed: {exc.reason or exc}") from exc
    return tls


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file is None:
        try:
            import certifi

            ca_file = certifi.where()
        except ImportError:
            pass
    return ssl.create_default_context(cafile=ca_file)


def _request(sock: socket.socket, target: _Target, opts: FetchOptions) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(target.host_header)
    conn.sock = sock  # already connected to the checked address
    conn.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", target.host_header)
    conn.putheader("User-Agent", opts.user_agent)
    conn.putheader("Accept", "image/*, */*;q=0.5")
    conn.putheader("Accept-Encoding", "gzip, deflate")
    conn.putheader("Connection", "close")
    conn.endheaders()
    return conn.getresponse()


def _read_body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """The body with Content-Encoding undone, never holding more than max_bytes."""
    declared = _declared_length(response)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes, f"Content-Length {declared} is larger")
    decoder = _decoder(response)
    body = bytearray()
    received = 0
    while chunk := response.read1(_CHUNK):  # one recv at a time: the watchdog can cut in
        received += len(chunk)
        if decoder is not None:
            # Ask for at most one byte past the cap, so a compression bomb stops here.
            chunk = decoder.decompress(chunk, max_bytes - len(body) + 1)
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes, "body is larger")
    if declared is not None and received < declared:
        raise http.client.IncompleteRead(b"", declared - received)
    if decoder is not None:
        body += decoder.flush()
        if not decoder.eof:  # all the framing promised arrived: the data itself is cut
            raise ItemError("protocol_error", "compressed body ends early")
        if len(body) > max_bytes:
            raise _too_large(max_bytes, "body is larger")
    return bytes(body)


def _declared_length(response: http.client.HTTPResponse) -> int | None:
    if response.chunked:  # Transfer-Encoding wins over Content-Length (RFC 9112)
        return None
    value = response.getheader("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        raise ItemError("protocol_error", f"bad Content-Length {value!r}") from None


def _content_encoding(response: http.client.HTTPResponse) -> str | None:
    value = (response.getheader("Content-Encoding") or "").strip().lower()
    return None if value in ("", "identity") else value


def _decoder(response: http.client.HTTPResponse) -> zlib._Decompress | None:
    encoding = _content_encoding(response)
    if encoding is None:
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise ItemError("protocol_error", f"unsupported Content-Encoding {encoding!r}")


def _require_image(data: bytes, content_type: str | None) -> None:
    """Judge the body by its bytes, never by its label."""
    from PIL import Image  # the caption path needs Pillow anyway

    try:
        with Image.open(io.BytesIO(data)):
            return
    except Image.DecompressionBombError:
        return  # an image; the pixel limit is images.py's business
    except Exception:  # Pillow raises many types for "not an image"
        pass
    label = (content_type or "").split(";", 1)[0].strip().lower()
    sniffed = _sniff(data)
    if not label:
        got = f"{sniffed} without a Content-Type"
    elif label.startswith("image/"):
        got = f"{sniffed} labelled {label}"
    else:
        got = label
    raise ItemError("not_an_image", f"got {got}, not an image")


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if not data:
        return "an empty body"
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return "HTML"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "XML"
    if head.startswith((b"{", b"[")):
        return "JSON"
    if head.startswith(b"%pdf"):
        return "PDF"
    return f"{len(data)} bytes of unknown data"


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    value = (response.getheader("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_error(response: http.client.HTTPResponse) -> ItemError:
    reason = f" {response.reason}" if response.reason else ""
    return ItemError("http_error", f"HTTP {response.status}{reason}")


def _too_large(max_bytes: int, why: str) -> ItemError:
    return ItemError("too_large", f"{why} than the {max_bytes}-byte limit (--max-bytes)")


def _deadline_error(opts: FetchOptions) -> ItemError:
    return ItemError("timeout", f"not done within the {opts.deadline:g} s deadline")


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the whole body arrived"
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Watch:
    """One armed deadline: shuts its socket if not cancelled in time."""

    def __init__(self, deadline: float, sock: socket.socket) -> None:
        self.deadline = deadline
        self.fired = False
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()

    def retarget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock

    def cancel(self) -> None:
        with self._lock:
            self._sock = None

    def fire(self) -> None:
        with self._lock:
            if self._sock is None:
                return
            self.fired = True
            try:
                # socket.socket's own shutdown: unblocks a recv in another
                # thread, TLS included, without touching the TLS state.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _Watchdog:
    """One daemon thread enforcing every in-flight item's wall-clock deadline.

    Socket timeouts bound each recv, not the total: a server dripping a byte
    a second (in the headers or the body) would never trip them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, sock: socket.socket) -> _Watch:
        watch = _Watch(deadline, sock)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="capcli-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, watch = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            watch.fire()  # outside the condition: fire takes the watch's lock


_WATCHDOG = _Watchdog()
