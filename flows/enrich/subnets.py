"""Longest-prefix lookups of exporter or flow addresses in configured subnets.

Addresses travel as 16 bytes (IPv4 as ::ffff:a.b.c.d), so IPv4 subnets are stored in their
IPv4-mapped form and one lookup path serves both families.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache
from typing import Generic, TypeVar

T = TypeVar("T")

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def as_v6_network(text: str) -> ipaddress.IPv6Network:
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv4Network):
        base = int(_MAPPED.network_address) | int(network.network_address)
        return ipaddress.IPv6Network((base, 96 + network.prefixlen))
    return network


def as_ip(address: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """16 bytes as carried in flows → the address object (IPv4 for IPv4-mapped)."""
    if address[:12] == MAPPED_PREFIX:
        return ipaddress.IPv4Address(address[12:])
    return ipaddress.IPv6Address(address)


class SubnetMap(Generic[T]):
    """subnet → value; `lookup` returns the value of the most specific subnet holding an address.

    One hash table per prefix length, longest first: a lookup costs one mask and one dict probe
    per distinct prefix length configured, whatever the number of subnets.
    """

    def __init__(self, entries: Mapping[str, T]) -> None:
        by_length: dict[int, dict[int, T]] = {}
        for text, value in entries.items():
            network = as_v6_network(text)
            by_length.setdefault(network.prefixlen, {})[int(network.network_address)] = value
        self._tables = [(length, int(ipaddress.IPv6Network(("::", length)).netmask), by_length[length])
                        for length in sorted(by_length, reverse=True)]
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def __bool__(self) -> bool:
        return bool(self._tables)

    def _lookup(self, address: bytes) -> T | None:
        value = int.from_bytes(address, "big")
        for _, mask, table in self._tables:
            item = table.get(value & mask)
            if item is not None:
                return item
        return None

    def all_matches(self, address: bytes, longest: int = 128) -> list[T]:
        """Every subnet holding the address, most specific first (for inheritance), ignoring
        those longer than `longest` bits (in the IPv4-mapped form for IPv4)."""
        value = int.from_bytes(address, "big")
        return [table[value & mask] for length, mask, table in self._tables
                if length <= longest and value & mask in table]
