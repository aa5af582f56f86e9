"""Enrichment through the outlet as users run it (`waxflow run outlet`, tansu broker, chDB, static
metadata naming the interfaces): networks, GeoIP answers, exporter and interface classes land in
the store, a rejected exporter's flows do not, and a GeoIP file swapped while the outlet runs
changes the answers without a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from connectors.broker import LocalBroker
from flows import envelope
from tests.conftest import free_port
from tests.mmdb import maxmind_asn, maxmind_city, write_mmdb
from tests.test_snmp_outlet import metric, wait_rows

EXPORTERS = ["192.0.2.1", "198.51.100.3", "2001:db8::4"]  # static metadata, rejected, unnamed
DATAGRAMS = 30  # per phase, 10 flows each


def datagram(seq: int) -> bytes:
    """Ten flows 10.1.<seq>.<j> → 203.0.113.9 (source port seq) in on ifIndex 7."""
    records = [NetflowRecordV5(src=f"10.{1 + seq % 2}.{seq}.{j + 1}", dst="203.0.113.9",
                               srcport=seq, dstport=443, prot=6, dpkts=1, dOctets=1500, input=7)
               for j in range(10)]
    packet = NetflowHeader() / NetflowHeaderV5(count=10, unixSecs=int(time.time()), flowSequence=seq)
    for record in records:
        packet = packet / record
    return bytes(packet)


def produce(producer: Producer, topic: str, first: int) -> None:
    for seq in range(first, first + DATAGRAMS):
        exporter = EXPORTERS[seq % len(EXPORTERS)]
        producer.produce(topic, key=envelope.address_bytes(exporter), value=envelope.encode(
            "netflow", 0, time.time_ns(), exporter, 2055, datagram(seq)))
    assert producer.flush(20) == 0


def settings(broker: LocalBroker, topic_name: str, api: int, asn: Path, city: Path) -> dict:
    return {
        "kafka": {"brokers": [broker.bootstrap], "topic": topic_name,
                  "consumer_group": f"outlet-{topic_name}", "start_offset": "earliest"},
        "clickhouse": {"dsn": "chdb:data/clickhouse", "batch_wait": "1s", "batch_rows": 200},
        "api": {"listen": f"127.0.0.1:{api}"},
        "enrichment": {
            "static": {"192.0.2.0/24": {"name": "par1-edge1", "interfaces": {
                7: {"name": "ge-0/0/7", "description": "Transit: Lumen AS3356", "speed": 10000}}}},
            "geoip": {"asn_database": str(asn), "geo_database": [str(city)], "check_interval": "1s"},
            "networks": {"10.0.0.0/8": {"name": "corp", "asn": 64600, "country": "FR"},
                         "10.1.0.0/16": {"site": "par1"}},
            "classifiers": {
                "exporter": [{"match": {"subnet": "198.51.100.0/24"}, "reject": True},
                             {"match": {"name": r"^(?P<site>[a-z]+\d)-(?P<role>edge|core)\d+$"},
                              "set": {"site": "$site", "role": "$role"}}],
                # the shipped Transit/PNI/IX rule, then everything else internal
                "interface": [{"match": {"description": r"^(?P<c>Transit|PNI|IX):\s*(?P<p>[\w.-]+)"},
                               "set": {"connectivity": "$c", "provider": "$p", "boundary": "external"}},
                              {"set": {"boundary": "internal"}}]}},
    }


def stored(workdir: Path) -> list[dict]:
    query = ("SELECT SrcPort, ExporterName, ExporterSite, ExporterRole, SrcNetName, SrcNetSite, "
             "SrcAS, toString(SrcCountry) AS SrcCountry, DstAS, toString(DstCountry) AS DstCountry, "
             "DstGeoCity, InIfConnectivity, InIfProvider, toString(InIfBoundary) AS InIfBoundary, "
             "toString(OutIfBoundary) AS OutIfBoundary FROM waxflow.flows")
    result = subprocess.run([sys.executable, "-m", "waxflow", "query", "--format", "jsonl", query],
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
    api = free_port()
    (tmp_path / "dataflows.yaml").write_text(json.dumps(settings(broker, topic_name, api, asn, city)))
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    produce(producer, topic, 0)
    kept_each = 10 * DATAGRAMS * 2 // 3
    outlet = subprocess.Popen(
        [sys.executable, "-m", "waxflow", "run", "outlet", "-w", "2", "-s", "1"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=(tmp_path / "outlet.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_rows(api, kept_each)
        write_mmdb(city, {"203.0.113.0/24": maxmind_city("DE", "Berlin")})  # a new download
        time.sleep(2.5)  # past check_interval: the next batch looks at the file
        produce(producer, topic, DATAGRAMS)
        metrics = wait_rows(api, 2 * kept_each)
    finally:
        outlet.kill()
        outlet.wait(10)
    assert metric(metrics, "waxflow_classifier_rejected_flows_total") == 2 * 10 * DATAGRAMS / 3
    assert metric(metrics, "waxflow_geoip_reloads_total") >= 1  # each process reloads once

    rows = stored(tmp_path)
    assert len(rows) == 2 * kept_each
    assert {row["ExporterName"] for row in rows} == {"par1-edge1", "2001:db8::4"}
    for row in rows:
        seq = row["SrcPort"]
        if row["ExporterName"] == "par1-edge1":
            assert (row["ExporterSite"], row["ExporterRole"]) == ("par1", "edge")
            assert (row["InIfConnectivity"], row["InIfProvider"], row["InIfBoundary"]) == (
                "transit", "lumen", "external")
        else:  # no metadata: no description to classify, the catch-all rule applies
            assert (row["ExporterSite"], row["InIfConnectivity"], row["InIfBoundary"]) == (
                "", "", "internal")
        assert row["OutIfBoundary"] == "internal"
        assert (row["SrcNetName"], row["SrcAS"], row["SrcCountry"]) == ("corp", 64600, "FR")
        assert row["SrcNetSite"] == ("par1" if seq % 2 == 0 else "")
        assert row["DstAS"] == 64500
        assert (row["DstCountry"], row["DstGeoCity"]) == (
            ("JP", "Tokyo") if seq < DATAGRAMS else ("DE", "Berlin")), row
