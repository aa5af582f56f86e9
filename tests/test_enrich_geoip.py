"""GeoIP/ASN: databases generated here (MaxMind and IPinfo layouts), swapped on disk while the
enricher runs: new answers without a restart, broken files keep the old answers (counted)."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from prometheus_client import REGISTRY, generate_latest

from connectors import geoip
from connectors.geoip import GeoIPDatabases, open_geoip
from flows import schema
from flows.enrich import Enricher
from flows.envelope import address_bytes
from flows.settings import ConfigError, Enrichment, GeoIP, load_settings
from tests.mmdb import ipinfo_asn, ipinfo_location, maxmind_asn, maxmind_city, write_mmdb


class Clock:
    """Injected into the databases so reload checks are driven by the test, not by sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flows(src: list[str], dst: list[str], src_as: list[int] | None = None) -> pa.RecordBatch:
    n = len(src)
    return schema.make_batch({
        "ExporterAddress": [address_bytes("192.0.2.1")] * n,
        "SrcAddr": [address_bytes(a) for a in src], "DstAddr": [address_bytes(a) for a in dst],
        "SrcAS": src_as or [0] * n, "SamplingRate": [1] * n, "Bytes": [100] * n}, n)


def column(batch: pa.RecordBatch, name: str) -> list:
    values = batch.column(name).to_pylist()
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def reloads(path: Path) -> float:
    return geoip.RELOADS.labels(path.name)._value.get()


def errors(path: Path, reason: str) -> float:
    return geoip.ERRORS.labels(path.name, reason)._value.get()


@pytest.fixture
def databases(tmp_path: Path) -> tuple[Path, Path]:
    asn = write_mmdb(tmp_path / "asn.mmdb", {
        "8.8.8.0/24": maxmind_asn(15169, "GOOGLE"),
        "2001:db8::/32": maxmind_asn(64496),
        "198.51.100.0/24": maxmind_asn(65001),
    }, "GeoLite2-ASN")
    city = write_mmdb(tmp_path / "city.mmdb", {
        "8.8.8.0/24": maxmind_city("US", "Mountain View", "California"),
        "2001:db8:1::/48": maxmind_city("FR", "Paris", "Île-de-France"),
        "203.0.113.0/24": maxmind_city("JP"),
    })
    return asn, city


def enricher(asn: Path, city: Path, clock: Clock, **geo: object) -> Enricher:
    cfg = Enrichment(geoip=GeoIP(asn_database=[asn], geo_database=[city], **geo))
    return Enricher(cfg, geoip=GeoIPDatabases(cfg.geoip, clock))


def test_maxmind_answers_for_ipv4_and_ipv6(databases: tuple[Path, Path]) -> None:
    out = enricher(*databases, Clock())(flows(["8.8.8.8", "2001:db8:1::5", "10.0.0.1"],
                                              ["203.0.113.7", "8.8.8.9", "8.8.8.8"]))
    assert column(out, "SrcAS") == [15169, 64496, 0]
    assert column(out, "SrcCountry") == ["US", "FR", "\0\0"]
    assert column(out, "SrcGeoCity") == ["Mountain View", "Paris", ""]
    assert column(out, "SrcGeoState") == ["California", "Île-de-France", ""]
    assert column(out, "DstAS") == [0, 15169, 15169]
    assert column(out, "DstCountry") == ["JP", "US", "US"]


def test_ipinfo_layout(tmp_path: Path) -> None:
    asn = write_mmdb(tmp_path / "ipinfo-asn.mmdb", {"8.8.8.0/24": ipinfo_asn(15169, "Google LLC")},
                     "ipinfo asn.mmdb")
    location = write_mmdb(tmp_path / "ipinfo-location.mmdb",
                          {"8.8.8.0/24": ipinfo_location("US", "Mountain View", "California")},
                          "ipinfo standard_location.mmdb")
    out = enricher(asn, location, Clock())(flows(["8.8.8.8"], ["8.8.4.4"]))
    assert (column(out, "SrcAS"), column(out, "SrcCountry")) == ([15169], ["US"])
    assert (column(out, "SrcGeoCity"), column(out, "SrcGeoState")) == (["Mountain View"], ["California"])
    assert column(out, "DstAS") == [0]


def test_asn_provider_order(databases: tuple[Path, Path]) -> None:
    src = ["8.8.8.8", "8.8.8.8", "198.51.100.1", "198.51.100.1"]
    flow_as = [0, 3356, 64512, 174]  # none, public, private, public
    default = enricher(*databases, Clock())(flows(src, src, flow_as))
    assert column(default, "SrcAS") == [15169, 3356, 64512, 174]
    assert column(default, "DstAS") == [15169, 15169, 65001, 65001]  # the flow has no DstAS
    except_private = enricher(*databases, Clock(), asn_providers=["flow-except-private", "geoip"])
    assert column(except_private(flows(src, src, flow_as)), "SrcAS") == [15169, 3356, 65001, 174]
    database_first = enricher(*databases, Clock(), asn_providers=["geoip", "flow"])
    assert column(database_first(flows(src, src, flow_as)), "SrcAS") == [15169, 15169, 65001, 65001]


def test_swapped_database_gives_new_answers_without_restart(databases: tuple[Path, Path]) -> None:
    asn, city = databases
    clock = Clock()
    enrich = enricher(asn, city, clock, check_interval="30s")
    assert column(enrich(flows(["8.8.8.8"], ["8.8.8.8"])), "SrcCountry") == ["US"]
    before = reloads(city)

    write_mmdb(city, {"8.8.8.0/24": maxmind_city("DE", "Berlin")})  # a new download, renamed over
    clock.now += 10  # not yet time to look at the file: cached answers stay
    assert column(enrich(flows(["8.8.8.8"], ["8.8.8.8"])), "SrcCountry") == ["US"]
    clock.now += 30
    out = enrich(flows(["8.8.8.8"], ["8.8.8.8"]))
    assert (column(out, "SrcCountry"), column(out, "SrcGeoCity")) == (["DE"], ["Berlin"])
    assert column(out, "SrcAS") == [15169]  # the ASN file did not change
    assert reloads(city) == before + 1

    write_mmdb(asn, {"8.8.8.0/24": maxmind_asn(64999)}, atomic=False)  # rewritten in place
    clock.now += 30
    assert column(enrich(flows(["8.8.8.8"], ["8.8.8.8"])), "SrcAS") == [64999]


def test_broken_or_missing_file_keeps_old_answers(databases: tuple[Path, Path]) -> None:
    asn, city = databases
    clock = Clock()
    enrich = enricher(asn, city, clock, check_interval=0)
    assert column(enrich(flows(["8.8.8.8"], ["8.8.8.8"])), "SrcAS") == [15169]
    broken, missing = errors(asn, "reload"), errors(city, "missing")

    asn.write_bytes(b"half a download")
    city.unlink()
    clock.now += 1
    out = enrich(flows(["8.8.8.8"], ["8.8.8.8"]))
    assert (column(out, "SrcAS"), column(out, "SrcCountry")) == ([15169], ["US"])
    assert errors(asn, "reload") == broken + 1
    assert errors(city, "missing") == missing + 1

    write_mmdb(asn, {"8.8.8.0/24": maxmind_asn(3356)})  # the next complete file is picked up
    clock.now += 1
    assert column(enrich(flows(["8.8.8.8"], ["8.8.8.8"])), "SrcAS") == [3356]


def test_unreadable_database_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "bad.mmdb").write_bytes(b"not a database")
    config = tmp_path / "dataflows.yaml"
    config.write_text(f"enrichment: {{geoip: {{geo_database: [{tmp_path / 'bad.mmdb'}]}}}}\n")
    with pytest.raises(ConfigError, match=r"enrichment\.geoip\.geo_database\[0\]: .*bad\.mmdb"):
        open_geoip(load_settings(config).enrichment.geoip)
    config.write_text(f"enrichment: {{geoip: {{asn_database: {tmp_path / 'absent.mmdb'}}}}}\n")
    with pytest.raises(ConfigError, match=r"enrichment\.geoip\.asn_database\[0\]: Path does not"):
        load_settings(config)


def test_worker_threads_share_the_databases_and_see_every_reload(databases: tuple[Path, Path]) -> None:
    asn, city = databases
    clock = Clock()
    enrich = enricher(asn, city, clock, check_interval=0)
    batch = flows(["8.8.8.8"], ["8.8.8.8"])
    with ThreadPoolExecutor(max_workers=1) as worker:  # one other thread, as Bytewax's -w 2
        assert column(worker.submit(enrich, batch).result(), "SrcCountry") == ["US"]
        assert column(enrich(batch), "SrcCountry") == ["US"]
        assert worker.submit(lambda: enrich.chain).result() is not enrich.chain

        write_mmdb(city, {"8.8.8.0/24": maxmind_city("DE", "Berlin")})
        clock.now += 1
        assert column(enrich(batch), "SrcCountry") == ["DE"]  # this thread reloads the file
        # the other thread's cache still holds US: the reload's generation tells it to drop it
        assert column(worker.submit(enrich, batch).result(), "SrcCountry") == ["DE"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
def test_enrichment_metrics_pass_promtool(databases: tuple[Path, Path]) -> None:
    asn, city = databases
    clock = Clock()
    cfg = Enrichment.model_validate({
        "geoip": {"asn_database": [str(asn)], "geo_database": [str(city)], "check_interval": 0},
        "classifiers": {"interface": [{"reject": True}]}, "sampling": {"missing": "drop"}})
    enrich = Enricher(cfg, geoip=GeoIPDatabases(cfg.geoip, clock))
    enrich(flows(["8.8.8.8"], ["8.8.8.8"]))
    write_mmdb(city, {"8.8.8.0/24": maxmind_city("DE")})
    clock.now += 1
    enrich(flows(["8.8.8.8"], ["8.8.8.8"]))
    prefixes = tuple(f"{kind}waxflow_{name}".encode() for kind in ("", "# HELP ", "# TYPE ")
                     for name in ("geoip_", "classifier_", "enrich_"))
    text = b"\n".join(line for line in generate_latest(REGISTRY).splitlines() if line.startswith(prefixes))
    result = subprocess.run(["promtool", "check", "metrics"], input=text + b"\n", capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (b"waxflow_geoip_reloads_total{", b"waxflow_classifier_rejected_flows_total{",
                 b"waxflow_enrich_lookups_total{", b"waxflow_classifier_errors_total"):
        assert name in text


def test_odd_records_give_empty_answers_not_errors(tmp_path: Path) -> None:
    odd = write_mmdb(tmp_path / "odd.mmdb", {
        "192.0.2.0/25": {"autonomous_system_number": "many", "country": ["FR"], "city": {"names": "x"},
                         "subdivisions": [7]},
        "192.0.2.128/25": {"asn": "AS-NONE", "country": {"iso_code": "ÉÉ"}, "region": 7,
                           "country_code": "France"},
        "198.51.100.0/24": {"asn": "AS99999999999", "country": "fr", "city": "Lyon"},
    })
    out = enricher(odd, odd, Clock())(flows(["192.0.2.1", "192.0.2.200", "198.51.100.1"],
                                            ["192.0.2.1"] * 3))
    assert column(out, "SrcAS") == [0, 0, 0]
    assert column(out, "SrcCountry") == ["\0\0", "\0\0", "FR"]
    assert column(out, "SrcGeoCity") == ["", "", "Lyon"]
    assert column(out, "SrcGeoState") == ["", "", ""]
