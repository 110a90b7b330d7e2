"""ClientAddressResolver: X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

import pytest

from app.admission.proxies import ClientAddressResolver


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.5", "203.0.113.1", "203.0.113.1"),
        ("10.0.0.5", "198.51.100.9, 203.0.113.1", "203.0.113.1"),
        ("10.0.0.5", "203.0.113.1, 10.0.0.9", "203.0.113.1"),
        ("10.0.0.5", "", "10.0.0.5"),
        ("10.0.0.5", "10.0.0.7, 10.0.0.9", "10.0.0.5"),
        ("10.0.0.5", "not-an-ip", "10.0.0.5"),
        ("192.0.2.44", "203.0.113.1", "192.0.2.44"),
        ("10.0.0.5", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_resolution(peer: str, forwarded: str, expected: str) -> None:
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    assert resolver.resolve(peer, {"x-forwarded-for": forwarded}) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    resolver = ClientAddressResolver([])
    assert resolver.resolve("10.0.0.5", {"x-forwarded-for": "203.0.113.1"}) == "10.0.0.5"


def test_single_addresses_are_networks_too() -> None:
    resolver = ClientAddressResolver(["127.0.0.1"])
    assert resolver.resolve("127.0.0.1", {"x-forwarded-for": "203.0.113.1"}) == "203.0.113.1"
    assert resolver.resolve("127.0.0.2", {"x-forwarded-for": "203.0.113.1"}) == "127.0.0.2"
