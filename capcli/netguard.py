"""Which network addresses capcli may fetch from.

URL lists are untrusted input: without a guard, a line like
``http://169.254.169.254/latest/meta-data/`` turns capcli into a proxy into
the network it runs in. The guard resolves a host once, refuses it if any of
its addresses is not a public unicast address, and hands back the checked
addresses so that the caller connects to exactly those (no second lookup, so
no DNS-rebinding gap between check and use).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence

from capcli.errors import ItemError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# (host, port) -> addresses as strings; tests inject a dict-backed one.
Resolver = Callable[[str, int], Sequence[str]]

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # embeds an IPv4 address (RFC 6052)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``getaddrinfo`` gives for a TCP connection, first-seen order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ItemError("dns_error", f"cannot resolve {host}: {exc}") from exc
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%", 1)[0], None)
    return list(seen)


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address"
        # Prefixes that carry an IPv4 address to another network: judge that one.
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:  # judged by the IPv4 address it leads to
            inner = refusal_reason(embedded)
            return f"IPv6 address leading to {embedded}, a {inner}" if inner else None
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _SHARED:
            return "shared address space (100.64.0.0/10)"
        if ip in _THIS_NETWORK:
            return "'this network' address (0.0.0.0/8)"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "reserved address"
    if ip.is_private:
        return "private address"
    if not ip.is_global:
        return "non-public address"
    return None


_IPV4_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host denotes, or None for a host name.

    Follows the WHATWG URL rules that browsers and curl apply, so the legacy
    forms ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` and ``127.1`` all mean
    127.0.0.1, and ``[::ffff:7f00:1]`` is an IPv6 literal. A host whose last
    label is a number but that is no valid address is an invalid URL.
    """
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ItemError("invalid_url", f"bad IPv6 literal {host}") from exc
    if ":" in host:  # urlsplit().hostname drops the brackets
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ItemError("invalid_url", f"bad IPv6 literal [{host}]") from exc
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # trailing dot: "127.0.0.1."
    if not parts or not _IPV4_PART.match(parts[-1]):
        return None  # an ordinary host name
    if len(parts) > 4 or not all(_IPV4_PART.match(p) for p in parts):
        raise ItemError("invalid_url", f"host {host!r} is not a valid IPv4 address")
    numbers = [_ipv4_number(p) for p in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise ItemError("invalid_url", f"host {host!r} is not a valid IPv4 address")
    value = last
    for i, n in enumerate(head):
        value += n * 256 ** (3 - i)
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        if not all(c in "01234567" for c in part):
            raise ItemError("invalid_url", f"{part!r} is not an octal number")
        return int(part, 8)
    return int(part)


def checked_addresses(
    host: str,
    port: int,
    *,
    allow_private_network: bool = False,
    resolver: Resolver | None = None,
) -> list[IPAddress]:
    """The addresses to connect to for ``host``, after the policy check.

    ``host`` is the URL's host (IDNA-encoded, lower case). Raises ItemError
    ``blocked_address`` when any address is refused (a name resolving to a mix
    of public and private addresses is refused as a whole), ``dns_error``
    when the name does not resolve.
    """
    numeric = parse_numeric_host(host)
    if numeric is not None:
        addresses = [numeric]
    else:
        raw = (resolver or system_resolver)(host, port)
        if not raw:
            raise ItemError("dns_error", f"{host} has no addresses")
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in raw]
        except ValueError as exc:
            raise ItemError("dns_error", f"resolver gave a bad address for {host}: {exc}") from exc
    if allow_private_network:
        return addresses
    for ip in addresses:
        reason = refusal_reason(ip)
        if reason:
            shown = host if numeric is None else "the host"
            raise ItemError(
                "blocked_address",
                f"refusing {shown} -> {ip}: {reason} (use --allow-private-network to allow)",
            )
    return addresses
