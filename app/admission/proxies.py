"""Which address a connection comes from, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddressResolver:
    """The client's address for per-IP limits.

    Behind trusted proxies the real client is the right-most X-Forwarded-For entry that is not
    itself a trusted proxy: entries further left were written by the client and prove nothing.
    """

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in trusted
        )

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def resolve(self, peer: str, headers: Mapping[str, str]) -> str:
        if not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded = [part.strip() for part in headers.get("x-forwarded-for", "").split(",")]
        for address in reversed([part for part in forwarded if part]):
            if not self._is_trusted(address):
                try:
                    return str(ipaddress.ip_address(address))
                except ValueError:
                    return peer  # garbage in the chain: fall back to the proxy itself
        return peer
