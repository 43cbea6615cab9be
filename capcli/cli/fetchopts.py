"""Download options shared by ``capcli url-list`` and ``capcli caption`` (for URL inputs).

A command adds ``@fetch_options`` and turns the parsed values into the
``fetch`` callable the pipeline's readers call, with ``fetch_from(options)``
(which removes those keys from the command's keyword arguments).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import click

from capcli.fetch import FetchOptions, fetch_bytes

_DEFAULTS = FetchOptions()
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


class ByteSize(click.ParamType):
    """A byte count: ``20000000``, ``20MB``, ``500k``, ``1.5MiB``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            self.fail(f"{value!r} is not a size like 20MB, 500k or 1048576", param, ctx)
        size = int(float(match.group(1)) * _UNITS[unit])
        if size < 1:
            self.fail("the size must be at least 1 byte", param, ctx)
        return size


_OPTIONS = [
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        default=_DEFAULTS.timeout_read,
        show_default=True,
        help="Connect timeout, and longest silence while reading a response.",
    ),
    click.option(
        "--deadline",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        default=_DEFAULTS.deadline,
        show_default=True,
        help="Wall-clock limit per URL, over all redirects, retries and waits.",
    ),
    click.option(
        "--max-bytes",
        type=ByteSize(),
        metavar="SIZE",
        default=_DEFAULTS.max_bytes,
        show_default="20MB",
        help="Refuse bodies larger than this (Content-Length and the decoded stream): too_large.",
    ),
    click.option(
        "--retries",
        type=click.IntRange(min=0),
        metavar="N",
        default=_DEFAULTS.retries,
        show_default=True,
        help="Extra attempts after a timeout, a connection error, 429 or 5xx (backoff with jitter).",
    ),
    click.option(
        "--max-redirects",
        type=click.IntRange(min=0),
        metavar="N",
        default=_DEFAULTS.max_redirects,
        show_default=True,
        help="Redirects followed per URL; every hop passes the network guard again.",
    ),
    click.option(
        "--allow-private-network",
        is_flag=True,
        help="Also fetch from loopback, private, link-local and other non-public addresses.",
    ),
]
_KEYS = ("timeout", "deadline", "max_bytes", "retries", "max_redirects", "allow_private_network")


def fetch_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the download options; ``fetch_from`` consumes them."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def fetch_from(options: dict[str, Any]) -> Callable[[str], bytes]:
    """Pop the download options from a command's kwargs: URL -> bytes with those limits."""
    values = {key: options.pop(key) for key in _KEYS}
    settings = FetchOptions(
        timeout_connect=values["timeout"],
        timeout_read=values["timeout"],
        deadline=values["deadline"],
        max_bytes=values["max_bytes"],
        retries=values["retries"],
        max_redirects=values["max_redirects"],
        allow_private_network=values["allow_private_network"],
    )
    return functools.partial(fetch_bytes, options=settings)
