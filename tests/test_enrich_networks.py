"""Networks: most specific subnet wins and inherits unset attributes from its supernets; a
network's ASN and country feed the flow columns; caches stay bounded."""

from __future__ import annotations

import ipaddress
import random

from flows import schema
from flows.enrich import Enricher
from flows.enrich.columns import KeyCache, Profiles
from flows.enrich.networks import inherited
from flows.enrich.subnets import SubnetMap
from flows.envelope import address_bytes
from flows.settings import Enrichment, Network

NETWORKS = {
    "10.0.0.0/8": {"name": "corp", "role": "internal", "region": "eu", "asn": 64600, "country": "FR"},
    "10.1.0.0/16": {"site": "par1", "tenant": "ops"},
    "10.1.2.0/24": {"name": "par1-servers", "role": "servers"},
    "10.1.2.128/25": {"tenant": "payments"},
    "2001:db8::/32": {"name": "v6-corp", "asn": 64601},
    "2001:db8:beef::/48": {"site": "ams1"},
}


def enrichment() -> Enrichment:
    return Enrichment.model_validate({"networks": NETWORKS})


def test_most_specific_inherits_from_supernets() -> None:
    resolved = inherited(enrichment().networks)
    assert resolved["10.1.2.128/25"] == Network(name="par1-servers", role="servers", site="par1",
                                                region="eu", tenant="payments", country="FR",
                                                asn=64600)
    assert resolved["10.1.0.0/16"] == Network(name="corp", role="internal", site="par1", region="eu",
                                              tenant="ops", country="FR", asn=64600)
    assert resolved["2001:db8:beef::/48"].name == "v6-corp"
    assert resolved["2001:db8:beef::/48"].site == "ams1"


def test_subnet_at_the_same_address_does_not_leak_into_its_supernet() -> None:
    resolved = inherited({"10.1.0.0/16": Network(name="big"), "10.1.0.0/24": Network(site="x")})
    assert resolved["10.1.0.0/16"] == Network(name="big")
    assert resolved["10.1.0.0/24"] == Network(name="big", site="x")


def test_longest_prefix_against_a_brute_force_scan() -> None:
    rng = random.Random(7)
    subnets = {f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{rng.randint(8, 30)}": i
               for i in range(300)}
    networks = {ipaddress.ip_network(s, strict=False): v for s, v in subnets.items()}
    table = SubnetMap(subnets)
    for _ in range(2000):
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if rng.random() < 0.5:  # make matches common: an address inside a configured subnet
            network = rng.choice(list(networks))
            address = network.network_address + rng.randrange(network.num_addresses)
        holding = [n for n in networks if address in n]
        expected = networks[max(holding, key=lambda n: n.prefixlen)] if holding else None
        assert table.lookup(address_bytes(str(address))) == expected


def test_network_attributes_in_flow_columns() -> None:
    src = ["10.1.2.200", "10.1.2.5", "10.9.9.9", "2001:db8:beef::1", "192.0.2.1"]
    n = len(src)
    batch = schema.make_batch({
        "ExporterAddress": [address_bytes("192.0.2.1")] * n,
        "SrcAddr": [address_bytes(a) for a in src], "DstAddr": [address_bytes("10.1.0.1")] * n,
        "SrcAS": [0, 0, 3356, 0, 0], "SamplingRate": [1] * n}, n)
    out = Enricher(enrichment())(batch)
    assert out.column("SrcNetName").to_pylist() == ["par1-servers", "par1-servers", "corp", "v6-corp", ""]
    assert out.column("SrcNetTenant").to_pylist() == ["payments", "ops", "", "", ""]
    assert out.column("SrcNetSite").to_pylist() == ["par1", "par1", "", "ams1", ""]
    assert out.column("SrcNetRegion").to_pylist() == ["eu", "eu", "eu", "", ""]
    assert out.column("SrcNetRole").to_pylist() == ["servers", "servers", "internal", "", ""]
    assert out.column("SrcAS").to_pylist() == [64600, 64600, 3356, 64601, 0]
    assert out.column("SrcCountry").to_pylist() == [b"FR", b"FR", b"FR", b"\0\0", b"\0\0"]
    assert out.column("DstNetSite").to_pylist() == ["par1"] * n
    assert out.column("DstNetTenant").to_pylist() == ["ops"] * n


def test_without_networks_or_databases_the_columns_are_untouched() -> None:
    batch = schema.make_batch({"SrcAddr": [address_bytes("10.0.0.1")], "SrcAS": [64512],
                               "SamplingRate": [1]}, 1)
    out = Enricher(Enrichment())(batch)
    assert out.column("SrcAS").to_pylist() == [64512]
    assert out.column("SrcNetName").to_pylist() == [""]


def test_key_cache_stays_bounded_and_keeps_keys_in_use() -> None:
    calls: list[int] = []
    profiles = Profiles(("value",))
    cache = KeyCache("address", profiles, lambda key: (calls.append(key) or f"v{key % 3}",), limit=20)
    for start in range(0, 200, 5):
        keys = [0, 1, *range(100 + start, 105 + start)]  # two keys in every batch, five new ones
        ids = cache.ids(keys)
        assert profiles.take_strings("value", ids).to_pylist() == [f"v{k % 3}" for k in keys]
        assert len(cache) <= 20 + len(keys) and len(profiles) <= 3
    assert calls.count(0) == calls.count(1) == 1  # never evicted while in use
    assert len(calls) == 2 + 200  # every other key resolved once


def test_key_cache_starts_over_when_profiles_pass_the_limit() -> None:
    profiles = Profiles(("value",))
    cache = KeyCache("address", profiles, lambda key: (f"v{key}",), limit=10)
    for start in range(0, 100, 5):
        ids = cache.ids(list(range(start, start + 5)))
        assert profiles.take_strings("value", ids).to_pylist() == [f"v{k}" for k in range(start, start + 5)]
        assert len(profiles) <= 15
