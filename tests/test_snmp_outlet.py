"""The outlet as users run it, with SNMP and static metadata: flows from an exporter polled on a
real snmpd and from one described in `enrichment.static` reach chDB with their interface names,
descriptions and speeds; when the agent stops, the breaker opens and flows keep flowing with
what is cached; the SNMP metrics pass promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from connectors.broker import LocalBroker
from flows import envelope
from tests.conftest import free_port
from tests.snmpd import COMMUNITY, SYS_NAME, SnmpAgent

# (exporter, in ifIndex, out ifIndex) of each datagram's ten flows.
TRAFFIC = [("127.0.0.1", 1, 4242), ("127.0.0.1", 4343, 1), ("192.0.2.1", 7, 0)]
AFTER_STOP = [("127.0.0.1", 1, 5555), ("127.0.0.1", 6666, 4242)]
DATAGRAMS_EACH = 20
FLOWS_EACH = DATAGRAMS_EACH * 10


def datagram(seq: int, in_if: int, out_if: int) -> bytes:
    records = [NetflowRecordV5(src=f"10.0.{seq % 250}.{j + 1}", dst="203.0.113.9", srcport=seq,
                               dstport=1000 + j, prot=6, dpkts=1, dOctets=100, input=in_if,
                               output=out_if) for j in range(10)]
    packet = NetflowHeader() / NetflowHeaderV5(count=10, unixSecs=int(time.time()), flowSequence=seq)
    for record in records:
        packet = packet / record
    return bytes(packet)


def produce(producer: Producer, topic: str, traffic: list[tuple[str, int, int]], first: int) -> None:
    for seq in range(first, first + DATAGRAMS_EACH * len(traffic)):
        exporter, in_if, out_if = traffic[seq % len(traffic)]
        value = envelope.encode("netflow", 0, time.time_ns(), exporter, 2055,
                                datagram(seq, in_if, out_if))
        producer.produce(topic, key=envelope.address_bytes(exporter), value=value)
    assert producer.flush(20) == 0


def wait_rows(api: int, rows: int, timeout: float = 90) -> str:
    """The outlet's /metrics once it has inserted `rows` rows."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            text = scrape(api)
        except OSError:
            text = ""
        if metric(text, "waxflow_clickhouse_rows_total") >= rows:
            break
        time.sleep(0.5)
    assert metric(text, "waxflow_clickhouse_rows_total") == rows, text[-2000:]
    return text


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.mark.slow
def test_outlet_stores_snmp_and_static_names(broker: LocalBroker, snmp_agent: SnmpAgent,
                                             topic_name: str, tmp_path: Path) -> None:
    topic = envelope.topic_name(topic_name)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    api = free_port()
    (tmp_path / "dataflows.yaml").write_text(json.dumps({
        "kafka": {"brokers": [broker.bootstrap], "topic": topic_name,
                  "consumer_group": f"outlet-{topic_name}", "start_offset": "earliest"},
        "clickhouse": {"dsn": "chdb:data/clickhouse", "batch_wait": "1s", "batch_rows": 200},
        "api": {"listen": f"127.0.0.1:{api}"},
        "enrichment": {
            "snmp": {"enabled": True, "timeout": "500ms", "retries": 1, "breaker_failures": 1,
                     "credentials": [
                {"subnet": "127.0.0.0/8", "port": snmp_agent.port, "communities": [COMMUNITY]}]},
            "static": {"192.0.2.0/24": {"name": "static-edge", "interfaces": {
                7: {"name": "ge-0/0/7", "description": "Transit: Lumen", "speed": 10000}}}}},
    }))
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    produce(producer, topic, TRAFFIC, 0)
    # As users run it: `waxflow run outlet` (recovery on, snapshots every second).
    log = tmp_path / "outlet.log"
    outlet = subprocess.Popen(
        [sys.executable, "-m", "waxflow", "run", "outlet", "-w", "2", "-s", "1"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        first = wait_rows(api, len(TRAFFIC) * FLOWS_EACH)
        assert metric(first, "waxflow_snmp_requests_total") >= 1
        assert metric(first, "waxflow_snmp_cache_misses_total") >= 1
        assert metric(first, "waxflow_snmp_held_flows_total") > 0

        # The agent goes away: flows with interfaces never seen are released when the poll
        # fails, the breaker opens, known interfaces keep their names.
        snmp_agent.stop()
        produce(producer, topic, AFTER_STOP, 1000)
        text = wait_rows(api, (len(TRAFFIC) + len(AFTER_STOP)) * FLOWS_EACH)
    finally:
        outlet.kill()
        outlet.wait(10)
    assert metric(text, "waxflow_snmp_breaker_opens_total") >= 1
    assert metric(text, "waxflow_snmp_errors_total") >= 1
    assert metric(text, "waxflow_snmp_released_flows_total") == metric(text, "waxflow_snmp_held_flows_total")
    if shutil.which("promtool"):
        snmp_lines = "\n".join(line for line in text.splitlines() if "waxflow_snmp_" in line) + "\n"
        check = subprocess.run(["promtool", "check", "metrics"], input=snmp_lines, text=True,
                               capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr

    result = subprocess.run(
        [sys.executable, "-m", "waxflow", "query", "--format", "jsonl",
         "SELECT ExporterName, InIfName, InIfDescription, InIfSpeed, OutIfName, OutIfDescription, "
         "OutIfSpeed, count() AS n FROM waxflow.flows GROUP BY ALL ORDER BY ALL"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [tuple(json.loads(line).values()) for line in result.stdout.splitlines()]
    each, gi, xe = FLOWS_EACH, ("Gi0/0/1", "Transit: Cogent AS174 [10G]", 10000), \
        ("xe-1/2/3", "PNI: Netflix", 100000)
    assert sorted(rows) == sorted([
        (SYS_NAME, *gi, *xe, each),
        (SYS_NAME, "GigabitEthernet0/3", "GigabitEthernet0/3", 1000, *gi, each),
        ("static-edge", "ge-0/0/7", "Transit: Lumen", 10000, "", "", 0, each),
        (SYS_NAME, *gi, "", "", 0, each),  # after the stop: 5555 was never answered
        (SYS_NAME, "", "", 0, *xe, each),  # ... nor 6666
    ])
