"""Networks: configured subnet → name, role, site, region, tenant, country, AS number.

The most specific subnet holding an address wins; an attribute it leaves unset comes from the
closest supernet that sets it. Inheritance is resolved once, when the table is built, so a
lookup is one longest-prefix match.
"""

from __future__ import annotations

from collections.abc import Mapping

from flows.enrich.subnets import SubnetMap, as_v6_network
from flows.settings import Network

ATTRIBUTES = tuple(Network.model_fields)


def inherited(networks: Mapping[str, Network]) -> dict[str, Network]:
    """Each subnet with the attributes it leaves unset filled from its supernets."""
    table = SubnetMap(networks)
    out = {}
    for subnet in networks:
        network = as_v6_network(subnet)
        # This subnet first, then its supernets, closest first.
        chain = table.all_matches(network.network_address.packed, network.prefixlen)
        merged = {name: next((getattr(n, name) for n in chain if getattr(n, name)),
                             Network.model_fields[name].default)
                  for name in ATTRIBUTES}
        out[subnet] = Network(**merged)
    return out


class Networks:
    """Longest-prefix lookup of an address in the configured networks, inheritance applied."""

    def __init__(self, networks: Mapping[str, Network]) -> None:
        self.table: SubnetMap[Network] = SubnetMap(inherited(networks))

    def __bool__(self) -> bool:
        return bool(self.table)

    def lookup(self, address: bytes) -> Network | None:
        return self.table.lookup(address)
