"""A minimal Chrome DevTools Protocol client for tests: headless Chromium over ``--remote-debugging-pipe``.

The pipe transport (file descriptors 3 and 4 of the browser, NUL-terminated
JSON messages) needs no websocket library, no free port and no chromedriver.

    with Browser.launch() as browser:
        page = browser.new_page()
        page.navigate(Path("review.html").as_uri())
        page.evaluate("document.title")

Every console message, uncaught exception, log entry and network request of
a page is kept in ``page.console`` / ``page.exceptions`` / ``page.log`` /
``page.requests``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """$CAPCLI_CHROMIUM, else the first Chromium/Chrome on PATH."""
    explicit = os.environ.get("CAPCLI_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, profile: str) -> None:
        self._proc, self._out, self._in, self._profile = proc, to_browser, from_browser, profile
        self._next_id = 0
        self._lock = threading.Lock()
        self._buffer = b""
        self._replies: dict[int, dict] = {}
        self._pages: dict[str, Page] = {}

    @classmethod
    def launch(cls, executable: str | None = None, *, extra_flags: tuple[str, ...] = ()) -> Browser:
        executable = executable or find_chromium()
        if not executable:
            raise FileNotFoundError("no chromium found")
        profile = tempfile.mkdtemp(prefix="capcli-chromium-")
        # The browser reads commands on its fd 3 and writes replies on its fd 4.
        cmd_read, cmd_write = os.pipe()
        reply_read, reply_write = os.pipe()

        def child_fds() -> None:
            # Via fds >= 10, so that neither end is overwritten before it is copied.
            high_read = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(reply_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        args = [
            executable,
            *FLAGS,
            *extra_flags,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            pass_fds=(3, 4),  # kept open by close_fds, which runs after child_fds
        )
        os.close(cmd_read)
        os.close(reply_write)
        return cls(proc, cmd_write, reply_read, profile)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (CDPError, OSError, TimeoutError):
                    pass
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            for fd in (self._out, self._in):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol ---------------------------------------------------------

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 60) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + timeout
        while ident not in self._replies:
            self._pump(deadline, f"{method} timed out after {timeout} s")
        reply = self._replies.pop(ident)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, predicate, timeout: float = 60, what: str = "event") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self._pump(deadline, f"no {what} within {timeout} s")

    def _pump(self, deadline: float, message: str) -> None:
        """Read at least one message from the browser (or time out)."""
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(message)
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise CDPError(f"the browser closed the pipe (exit code {self._proc.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        msg = json.loads(raw)
        if "id" in msg:
            self._replies[msg["id"]] = msg
        else:
            page = self._pages.get(msg.get("sessionId", ""))
            if page is not None:
                page._event(msg["method"], msg.get("params", {}))

    # -- pages --------------------------------------------------------------

    def new_page(self, width: int = 1280, height: int = 900, *, mobile: bool = False) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        return page


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        self.console: list[tuple[str, str]] = []  # (type, text)
        self.exceptions: list[str] = []
        self.log: list[tuple[str, str]] = []  # (level, text)
        self.requests: list[str] = []
        self.loaded = 0

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def _event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            self.console.append((params.get("type", ""), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.log.append((entry.get("level", ""), entry.get("text", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Page.loadEventFired":
            self.loaded += 1

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations, failed loads)."""
        return (
            [text for kind, text in self.console if kind in ("error", "assert")]
            + self.exceptions
            + [text for level, text in self.log if level == "error"]
        )

    def navigate(self, url: str, timeout: float = 120) -> None:
        before = self.loaded
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CDPError(f"navigating to {url}: {reply['errorText']}")
        if "loaderId" not in reply:  # a same-document navigation (only the fragment changed): no load event
            return
        self.browser.wait_for(lambda: self.loaded > before, timeout, "load event")

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        reply = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise CDPError(details.get("exception", {}).get("description") or details.get("text"))
        return reply["result"].get("value")

    def screenshot(self, *, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def press(self, key: str, code: str | None = None, text: str | None = None) -> None:
        """A real key press (keydown + keyup), as from the keyboard, into the focused element."""
        base = {"key": key, "code": code or key}
        if text is not None:
            self.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": text, **base})
        else:
            self.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **base})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})

    def type(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})
