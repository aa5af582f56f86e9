"""Source and destination attributes: AS number, country, city and state (GeoIP), network
name, role, site, region and tenant (enrichment.networks).

Per batch, the source and destination addresses are hashed together once; each distinct address
maps to a cached profile (its attributes), so only addresses never seen before reach the GeoIP
readers. AS numbers follow `enrichment.geoip.asn_providers`, first non-zero wins; a network's
country takes precedence over GeoIP's (it is how operators name their own address space).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from flows.enrich.columns import KeyCache, Profiles, fixed_binary, replace
from flows.enrich.networks import Networks
from flows.enrich.subnets import as_ip
from flows.settings import GeoIP

PROFILE = ("net_asn", "geo_asn", "Country", "GeoCity", "GeoState",
           "NetName", "NetRole", "NetSite", "NetRegion", "NetTenant")
NETWORK_COLUMNS = {"NetName": "name", "NetRole": "role", "NetSite": "site",
                   "NetRegion": "region", "NetTenant": "tenant"}
STRING_COLUMNS = ("GeoCity", "GeoState", *NETWORK_COLUMNS)
_UNSPECIFIED = bytes(16)


# --- reading MMDB records (MaxMind and IPinfo layouts) ------------------------------------
# A record is whatever the file holds: every reader checks types and returns "" or 0 for
# anything unexpected, so an odd database can never stop the dataflow.

def record_asn(record: dict[str, Any]) -> int:
    """MaxMind: autonomous_system_number: 15169; IPinfo: asn: "AS15169"."""
    value = record.get("autonomous_system_number", record.get("asn"))
    if isinstance(value, str) and value[:2].upper() == "AS":
        value = int(value[2:]) if value[2:].isdigit() else 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32:
        return value
    return 0


def _name(value: Any) -> str:
    """MaxMind: {"names": {"en": ...}}; IPinfo: a plain string."""
    if isinstance(value, dict):
        names = value.get("names")
        value = names.get("en") if isinstance(names, dict) else None
    return value if isinstance(value, str) else ""


def _country_code(value: Any) -> str:
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return ""


def record_country(record: dict[str, Any]) -> str:
    """MaxMind: country.iso_code (registered_country when absent); IPinfo: country_code, or
    country when it is a two-letter code."""
    for key in ("country", "registered_country"):
        value = record.get(key)
        if isinstance(value, dict) and _country_code(value.get("iso_code")):
            return _country_code(value["iso_code"])
    return _country_code(record.get("country_code")) or _country_code(record.get("country"))


def record_city(record: dict[str, Any]) -> str:
    return _name(record.get("city"))


def record_state(record: dict[str, Any]) -> str:
    """MaxMind: the first subdivision's name; IPinfo: region."""
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions:
        return _name(subdivisions[0])
    return _name(record.get("region"))


# --- AS number providers ---------------------------------------------------------------------

def private_asn(asn: np.ndarray) -> np.ndarray:
    """AS numbers that say nothing about who holds an address: 0, AS_TRANS (23456),
    documentation and private-use ranges (RFC 5398, 6996), reserved (RFC 7300)."""
    return ((asn == 0) | (asn == 23456) | ((asn >= 64496) & (asn <= 131071))
            | (asn >= 4200000000))


def choose_asn(providers: Sequence[str], flow: np.ndarray, networks: np.ndarray,
               geoip: np.ndarray) -> np.ndarray:
    """Per flow, the first provider with a non-zero AS number."""
    candidates = {"flow": lambda: flow, "networks": lambda: networks, "geoip": lambda: geoip,
                  "flow-except-private": lambda: np.where(private_asn(flow), 0, flow)}
    out = np.zeros(len(flow), np.uint32)
    for provider in providers:
        out = np.where(out == 0, candidates[provider](), out)
    return out


class AddressEnricher:
    """Fills Src/Dst AS, Country, GeoCity, GeoState and Net* columns of a batch."""

    def __init__(self, networks: Networks, geoip: Any, cfg: GeoIP) -> None:
        self.networks = networks
        self.geoip = geoip  # connectors.geoip.GeoIPDatabases, or None
        self.providers = list(cfg.asn_providers)
        self.profiles = Profiles(PROFILE)
        self.cache = KeyCache("address", self.profiles, self.resolve)
        self.generation = 0

    def __bool__(self) -> bool:
        return bool(self.networks) or bool(self.geoip)

    def resolve(self, address: bytes) -> tuple:
        network = self.networks.lookup(address) if self.networks else None
        geo_asn, country, city, state = 0, "", "", ""
        if self.geoip and address != _UNSPECIFIED:
            ip = as_ip(address)
            for database in self.geoip.asn:
                record = database.get(ip)
                geo_asn = record_asn(record) if record else 0
                if geo_asn:
                    break
            for database in self.geoip.geo:
                record = database.get(ip)
                if record:
                    country = country or record_country(record)
                    city = city or record_city(record)
                    state = state or record_state(record)
        if network is None:
            return (0, geo_asn, country, city, state, "", "", "", "", "")
        return (network.asn, geo_asn, network.country or country, city, state,
                *(getattr(network, field) for field in NETWORK_COLUMNS.values()))

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self or batch.num_rows == 0:
            return batch
        if self.geoip and self.geoip.current() != self.generation:
            self.cache.clear()  # answers from the previous files are stale
            self.generation = self.geoip.generation
        n = batch.num_rows
        ids = self.cache.row_ids(pa.concat_arrays([batch.column("SrcAddr"), batch.column("DstAddr")]))
        columns: dict[str, pa.Array] = {}
        for side, rows in (("Src", ids[:n]), ("Dst", ids[n:])):
            flow_asn = batch.column(f"{side}AS").to_numpy(zero_copy_only=False)
            asn = choose_asn(self.providers, flow_asn,
                             self.profiles.numbers("net_asn", np.uint32)[rows],
                             self.profiles.numbers("geo_asn", np.uint32)[rows])
            columns[f"{side}AS"] = pa.array(asn, pa.uint32())
            if self.profiles.strings("Country") is not None:
                columns[f"{side}Country"] = fixed_binary(
                    self.profiles.numbers("Country", np.dtype("S2"))[rows], 2)
            for name in STRING_COLUMNS:
                values = self.profiles.take_strings(name, rows)
                if values is not None:
                    columns[f"{side}{name}"] = values
        return replace(batch, columns)
