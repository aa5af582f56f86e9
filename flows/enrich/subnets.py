"""Longest-prefix lookups of exporter or flow addresses in configured subnets.

Addresses travel as 16 bytes (IPv4 as ::ffff:a.b.c.d), so IPv4 subnets are stored in their
IPv4-mapped form and one lookup path serves both families.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Generic, Mapping, TypeVar

T = TypeVar("T")

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def as_v6_network(text: str) -> ipaddress.IPv6Network:
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv4Network):
        base = int(_MAPPED.network_address) | int(network.network_address)
        return ipaddress.IPv6Network((base, 96 + network.prefixlen))
    return network


class SubnetMap(Generic[T]):
    """subnet → value; `lookup` returns the value of the most specific subnet holding an address."""

    def __init__(self, entries: Mapping[str, T]) -> None:
        networks = sorted(((as_v6_network(k), v) for k, v in entries.items()),
                          key=lambda item: item[0].prefixlen, reverse=True)
        self._entries = [(int(n.network_address), int(n.netmask), v) for n, v in networks]
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def _lookup(self, address: bytes) -> T | None:
        value = int.from_bytes(address, "big")
        for network, mask, item in self._entries:
            if value & mask == network:
                return item
        return None

    def all_matches(self, address: bytes) -> list[T]:
        """Every subnet holding the address, most specific first (for inheritance)."""
        value = int.from_bytes(address, "big")
        return [item for network, mask, item in self._entries if value & mask == network]
