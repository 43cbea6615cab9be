"""The network guard: address classes, numeric host forms, mixed answers."""

from __future__ import annotations

import ipaddress

import pytest

from capcli.errors import ItemError
from capcli.fetch import FetchOptions, fetch_bytes
from capcli.netguard import (
    checked_addresses,
    parse_numeric_host,
    refusal_reason,
    system_resolver,
)


def resolver_for(*addresses: str):
    def resolve(host: str, port: int) -> list[str]:
        assert host == "host.example" and port == 80
        return list(addresses)

    return resolve


BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata service
    ("fe80::1", "link-local"),
    ("100.64.0.1", "shared address space"),
    ("100.127.255.254", "shared address space"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("fec0::1", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "this network"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),  # refused whatever it maps to
    ("64:ff9b::a9fe:a9fe", "169.254.169.254, a link-local"),  # NAT64
    ("2002:c0a8:0101::1", "192.168.1.1, a private"),  # 6to4
    ("192.0.2.10", ""),  # documentation range: not public, whatever Python calls it
]

PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_every_non_public_class_is_refused(address: str, reason: str) -> None:
    with pytest.raises(ItemError) as info:
        checked_addresses("host.example", 80, resolver=resolver_for(address))
    assert info.value.kind == "blocked_address"
    message = str(info.value)
    assert "host.example" in message and reason in message
    assert "--allow-private-network" in message


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    got = checked_addresses("host.example", 80, resolver=resolver_for(address))
    assert got == [ipaddress.ip_address(address)]
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_a_name_with_public_and_private_addresses_is_refused() -> None:
    with pytest.raises(ItemError) as info:
        checked_addresses("host.example", 80, resolver=resolver_for("8.8.8.8", "10.1.1.1"))
    assert info.value.kind == "blocked_address"
    assert "10.1.1.1" in str(info.value)


def test_all_addresses_are_returned_in_order() -> None:
    got = checked_addresses("host.example", 80, resolver=resolver_for("8.8.8.8", "1.1.1.1"))
    assert [str(a) for a in got] == ["8.8.8.8", "1.1.1.1"]


def test_opt_in_allows_private_addresses() -> None:
    got = checked_addresses("host.example", 80, allow_private_network=True, resolver=resolver_for("127.0.0.1"))
    assert got == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",
        "0177.1",
        "127.1",
        "127.0.0.1.",
        "017700000001",
        "0x7F.0.0.1",
        "[::ffff:7f00:1]",
        "::1",
    ],
)
def test_numeric_forms_of_loopback_are_refused_without_lookup(host: str) -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("a numeric host must not be looked up")

    with pytest.raises(ItemError) as info:
        checked_addresses(host, 80, resolver=no_dns)
    assert info.value.kind == "blocked_address"
    assert "loopback" in str(info.value) or "IPv4-mapped" in str(info.value)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("3232235777", "192.168.1.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("8.8.8.8", "8.8.8.8"),
        ("134744072", "8.8.8.8"),
        ("example.com", None),
        ("1.2.3.example", None),
    ],
)
def test_numeric_host_parsing(host: str, address: str | None) -> None:
    parsed = parse_numeric_host(host)
    assert (str(parsed) if parsed else None) == address


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.4.5", "0x1ffffffff", "09.1.1.1", "1..1"])
def test_malformed_numeric_hosts_are_invalid(host: str) -> None:
    with pytest.raises(ItemError) as info:
        parse_numeric_host(host)
    assert info.value.kind == "invalid_url"


def test_resolver_failures_are_dns_errors() -> None:
    with pytest.raises(ItemError) as info:
        checked_addresses("host.example", 80, resolver=resolver_for())
    assert info.value.kind == "dns_error"
    with pytest.raises(ItemError) as info:
        checked_addresses("host.example", 80, resolver=resolver_for("not-an-ip"))
    assert info.value.kind == "dns_error"


def test_localhost_through_the_system_resolver_is_refused() -> None:
    assert "127.0.0.1" in system_resolver("localhost", 80) or "::1" in system_resolver(
        "localhost", 80
    )  # from the hosts file: no DNS traffic
    with pytest.raises(ItemError) as info:
        checked_addresses("localhost", 80)
    assert info.value.kind == "blocked_address"


@pytest.mark.parametrize(
    "url",
    [
        "http://host.example/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://[::ffff:10.0.0.1]/",
        "https://0x0a.1/x.png",
    ],
)
def test_fetch_refuses_before_connecting(url: str) -> None:
    def connector(address: str, port: int, timeout: float):
        raise AssertionError(f"connected to {address}")

    options = FetchOptions(resolver=resolver_for("10.9.8.7"), connector=connector, retries=0)
    with pytest.raises(ItemError) as info:
        fetch_bytes(url, options)
    assert info.value.kind == "blocked_address"
