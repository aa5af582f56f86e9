"""Detection in the outlet as users run it (`waxflow run outlet` with alerts.enabled, recovery
with 1 s snapshots), fed NetFlow v5 through the broker: an amplification fires one alert, stored
with its signature; the outlet is killed (SIGKILL) while the attack goes on and restarted: the
alert is still on (waxflow_alert_active is 1 again), it does not fire a second time, and it ends
once the attack stops — one row, start and end."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from connectors.broker import LocalBroker
from flows import envelope
from tests.conftest import free_port
from tests.outlet_process import Outlet, create_topic, write_config

pytestmark = pytest.mark.slow

VICTIM = (203, 0, 113, 7)
RULE = {"name": "amp", "filter": "Proto = 17 AND SrcPort = 123", "threshold": 5e6, "window": "5s",
        "min_duration": "2s", "cooldown": "1m"}


def v5(seq: int, attack: bool) -> bytes:
    """20 records: 10 ordinary UDP ones, and 10 NTP answers to the victim when `attack`."""
    records = []
    for j in range(20):
        if attack and j < 10:
            records.append((bytes([100, 0, j, 1]), bytes(VICTIM), 123, 40_000 + j, 40, 40 * 1400))
        else:
            records.append((bytes([10, 0, seq % 250, j]), bytes([198, 51, 100, j]), 443, 50_000 + j, 2, 2 * 600))
    header = struct.pack("!HHIIIIBBH", 5, len(records), 100_000, int(time.time()), 0, seq, 0, 0, 0)
    return header + b"".join(
        struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", src, dst, bytes(4), 1, 2, packets, octets, 99_000, 99_500,
                    sport, dport, 0, 0, 17, 0, 0, 0, 24, 24, 0)
        for src, dst, sport, dport, packets, octets in records)


class Stream:
    """Datagrams at 5 a second (an attack of ~22 Mbps when on) until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.attack = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(bootstrap, topic), daemon=True)
        self.thread.start()

    def _run(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        seq = 0
        while not self.stop.is_set():
            value = envelope.encode("netflow", 0, time.time_ns(), "192.0.2.1", 2055, v5(seq, self.attack))
            producer.produce(topic, key=envelope.address_bytes("192.0.2.1"), value=value)
            producer.poll(0)
            seq += 1
            self.stop.wait(0.2)
        producer.flush(30)


def _alerts(port: int) -> list[dict]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/alerts", timeout=30) as answer:
        return json.loads(answer.read())["alerts"]


def test_an_alert_survives_a_kill_without_firing_twice_and_ends(broker: LocalBroker, topic_name: str,
                                                                 tmp_path: Path) -> None:
    topic, api_port = envelope.topic_name(topic_name), free_port()
    create_topic(broker.bootstrap, topic, 1)
    config = write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic_name, api_port=api_port,
                          start_offset="committed", batch_rows=1_000, batch_wait="1s",
                          alerts={"enabled": True, "defaults": False, "rules": [RULE]})
    outlet = Outlet(config, api_port, snapshot_seconds=1)
    stream = Stream(broker.bootstrap, topic)
    try:
        outlet.start()
        outlet.wait_for(lambda o: o.value("waxflow_alert_active", rule="amp") == 1, 90, "the alert")
        (alert,) = _alerts(api_port)
        assert (alert["key"], alert["top_source_ports"], alert["top_protocols"], alert["end"]) == \
            ("203.0.113.7", [123], [17], None)
        time.sleep(3)  # (snapshots after the start)
        outlet.kill()
        outlet.start()
        outlet.wait_for(lambda o: o.value("waxflow_alert_active", rule="amp") == 1, 90, "the alert restated")
        time.sleep(3)
        assert outlet.value("waxflow_alert_events_total", rule="amp", kind="start") == 0  # not fired again
        stream.attack = False
        outlet.wait_for(lambda o: o.value("waxflow_alert_active", rule="amp") == 0, 90, "the end")
        assert outlet.value("waxflow_alert_events_total", rule="amp", kind="end") == 1
    finally:
        stream.stop.set()
        stream.thread.join(30)
        outlet.stop()
    rows = outlet.query("SELECT Rule, Key, toUInt32(Start) AS s, toUInt32(End) AS e FROM waxflow.alerts FINAL")[0]
    assert len(rows) == 1 and rows[0]["Key"] == "203.0.113.7" and rows[0]["e"] > rows[0]["s"] > 0, rows
