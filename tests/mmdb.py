"""GeoIP databases for tests and benchmarks, written with `mmdb-writer` in the MaxMind and
IPinfo layouts (IPv6 trees holding IPv4 too, as the real files do)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(path: Path, networks: Mapping[str, dict], database_type: str = "GeoLite2-City",
               atomic: bool = True) -> Path:
    """networks: CIDR → record. `atomic` writes beside the file and renames over it (as a
    download job would); otherwise the file is rewritten in place."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type,
                        int_type="u32")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    target = path.with_name(path.name + ".tmp") if atomic else path
    writer.to_db_file(str(target))
    if atomic:
        os.replace(target, path)
    return path


def maxmind_asn(asn: int, organization: str = "") -> dict:
    return {"autonomous_system_number": asn, "autonomous_system_organization": organization}


def maxmind_city(country: str, city: str = "", state: str = "") -> dict:
    record: dict = {"country": {"iso_code": country, "names": {"en": country}}}
    if city:
        record["city"] = {"names": {"en": city}}
    if state:
        record["subdivisions"] = [{"iso_code": state[:2].upper(), "names": {"en": state}}]
    return record


def ipinfo_asn(asn: int, name: str = "") -> dict:
    return {"asn": f"AS{asn}", "name": name, "domain": "example.net"}


def ipinfo_location(country: str, city: str = "", region: str = "") -> dict:
    return {"country": country, "city": city, "region": region, "latitude": "0", "longitude": "0"}
