"""Enrichment through the real outlet (`python -m bytewax.run flows.outlet`, tansu broker, chDB):
networks, GeoIP answers, exporter and interface classes land in the store, rejected exporters'
flows do not, and a GeoIP file swapped while the outlet runs changes the answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.broker import LocalBroker
from flows import envelope
from tests.mmdb import maxmind_asn, maxmind_city, write_mmdb
from tests.test_outlet_e2e import EXPORTERS, Outlet, produce, wait_consumed

# tests.test_outlet_e2e.produce: datagram `seq` comes from EXPORTERS[seq % 4], its flows go
# from 10.<seq % 250>.0.<j+1> (source port seq) to 203.0.113.9.

CONFIG = """
kafka: {{brokers: ['{bootstrap}'], topic: {topic}, consumer_group: {group}, start_offset: committed}}
clickhouse: {{dsn: 'chdb:data/clickhouse', batch_wait: 1s, batch_rows: 200}}
enrichment:
  geoip: {{asn_database: {asn}, geo_database: {city}, check_interval: 1s}}
  networks:
    10.0.0.0/8: {{name: corp, asn: 64600, country: FR}}
    10.1.0.0/16: {{site: par1}}
  classifiers:
    exporter:
      - match: {{subnet: 198.51.100.0/24}}
        reject: true
      - match: {{name: '^192\\.0\\.2\\.(?P<host>\\d+)$'}}
        set: {{site: 'lab$host', role: edge}}
    interface:
      - match: {{exporter_subnet: '2001:db8::/32'}}
        set: {{connectivity: transit, provider: cogent, boundary: external}}
      - set: {{boundary: internal}}
"""


def stored(workdir: Path) -> list[dict]:
    query = ("SELECT SrcPort, ExporterName, ExporterSite, ExporterRole, SrcNetName, SrcNetSite, "
             "SrcAS, toString(SrcCountry) AS SrcCountry, DstAS, toString(DstCountry) AS DstCountry, "
             "DstGeoCity, InIfConnectivity, InIfProvider, toString(InIfBoundary) AS boundary "
             "FROM waxflow.flows")
    result = subprocess.run([sys.executable, "-m", "flows.cli", "query", "--format", "jsonl", query],
                            cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_enriched_columns_in_the_store(broker: LocalBroker, topic_name: str, tmp_path: Path) -> None:
    topic = envelope.topic_name(topic_name)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    asn = write_mmdb(tmp_path / "asn.mmdb", {"203.0.113.0/24": maxmind_asn(64500)}, "GeoLite2-ASN")
    city = write_mmdb(tmp_path / "city.mmdb", {"203.0.113.0/24": maxmind_city("JP", "Tokyo")})
    group = f"outlet-{topic_name}"
    (tmp_path / "dataflows.yaml").write_text(CONFIG.format(
        bootstrap=broker.bootstrap, topic=topic_name, group=group, asn=asn, city=city))
    outlet = Outlet(tmp_path)
    produce(broker.bootstrap, topic, 0, 40)
    outlet.start()
    try:
        wait_consumed(broker.bootstrap, group, topic, 40)
        write_mmdb(city, {"203.0.113.0/24": maxmind_city("DE", "Berlin")})  # a new download
        time.sleep(2.5)  # longer than check_interval and a flush
        produce(broker.bootstrap, topic, 40, 40)
        wait_consumed(broker.bootstrap, group, topic, 80)
        time.sleep(2)  # the last batch is flushed (batch_wait 1s)
    finally:
        outlet.kill()

    rows = stored(tmp_path)
    seqs = {row["SrcPort"] for row in rows}
    kept = {seq for seq in range(80) if EXPORTERS[seq % 4] != "198.51.100.3"}
    assert seqs == kept, "flows of the rejected exporter are absent, every other flow is stored"
    assert len(rows) == 10 * len(kept)
    for row in rows:
        seq = row["SrcPort"]
        exporter = EXPORTERS[seq % 4]
        assert row["ExporterName"] == exporter
        if exporter.startswith("192.0.2."):
            assert (row["ExporterSite"], row["ExporterRole"]) == (f"lab{exporter[8:]}", "edge")
            assert (row["InIfConnectivity"], row["boundary"]) == ("", "internal")
        else:
            assert (row["ExporterSite"], row["InIfConnectivity"], row["InIfProvider"],
                    row["boundary"]) == ("", "transit", "cogent", "external")
        assert (row["SrcNetName"], row["SrcAS"], row["SrcCountry"]) == ("corp", 64600, "FR")
        assert row["SrcNetSite"] == ("par1" if seq % 250 == 1 else "")
        assert row["DstAS"] == 64500
        expected = ("JP", "Tokyo") if seq < 40 else ("DE", "Berlin")
        assert (row["DstCountry"], row["DstGeoCity"]) == expected, row
