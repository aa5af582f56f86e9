"""The inlet's spool through the whole pipeline (issue 13): routers send 20,000 flows/s over UDP
to the inlet while the broker stops answering for 60 s (SIGSTOP: it keeps its data but takes
nothing); the inlet's producer queue fills, the rest goes to its on-disk spool, and once the
broker answers again everything reaches the outlet and is stored exactly once."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from connectors.broker import LocalBroker
from flows import envelope
from tests import inlet_process
from tests.conftest import free_port
from tests.outlet_process import Outlet, parse_metrics, write_config
from tests.test_exactly_once import FLOWS_PER_DATAGRAM, v5_datagram

pytestmark = pytest.mark.slow

RATE = 20_000  # flows/s
BEFORE, OUTAGE, AFTER = 10.0, 60.0, 10.0  # seconds of the stream before, during and after


def send(port: int, seconds: float, first: int) -> int:
    """v5 datagrams of FLOWS_PER_DATAGRAM unique flows at RATE flows/s; returns the next seq."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    per_second = RATE // FLOWS_PER_DATAGRAM
    started, seq = time.monotonic(), first
    while time.monotonic() - started < seconds:
        due = first + int((time.monotonic() - started) * per_second)
        while seq < due:
            tx.sendto(v5_datagram(seq), ("127.0.0.1", port))
            seq += 1
        time.sleep(0.002)
    tx.close()
    return seq


def inlet_metrics(port: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return parse_metrics(answer.read().decode())


def total(metrics: dict, name: str) -> float:
    return sum(v for (n, _), v in metrics.items() if n == name)


def test_a_broker_away_for_a_minute_costs_no_flow(tmp_path: Path) -> None:
    broker = LocalBroker("127.0.0.1", free_port(), tmp_path / "broker")
    broker.start()
    topic_name = f"spool-{tmp_path.name[-8:].replace('_', '-')}"
    udp, inlet_port, api_port = free_port(), free_port(), free_port()
    inlet_dir = tmp_path / "inlet"
    inlet_dir.mkdir()
    config = inlet_process.write_config(
        inlet_dir / "dataflows.yaml", port=udp, metrics_port=inlet_port, bootstrap=broker.bootstrap,
        topic=topic_name, partitions=2,
        # a small producer queue: the outage overflows it into the spool within seconds
        producer={"queue.buffering.max.messages": 5000})
    settings = yaml.safe_load(config.read_text())
    settings["data_dir"] = str(inlet_dir / "data")
    config.write_text(yaml.safe_dump(settings))
    outlet = Outlet(write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic_name, api_port=api_port,
                                 batch_rows=50_000, batch_wait="1s"), api_port, snapshot_seconds=2)
    inlet = None
    try:
        inlet = inlet_process.start(config, inlet_dir / "inlet.log", inlet_port, "-w", "1",
                                    wait_topic=envelope.topic_name(topic_name), bootstrap=broker.bootstrap)
        outlet.start()
        seq = send(udp, BEFORE, 0)
        os.kill(broker.pid(), signal.SIGSTOP)
        try:
            seq = send(udp, OUTAGE, seq)
            during = inlet_metrics(inlet_port)
        finally:
            os.kill(broker.pid(), signal.SIGCONT)
        seq = send(udp, AFTER, seq)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            m = inlet_metrics(inlet_port)
            if total(m, "waxflow_inlet_spool_bytes") == 0 and total(m, "waxflow_inlet_kafka_queued") == 0:
                break
            time.sleep(1)
        after = inlet_metrics(inlet_port)
        assert total(after, "waxflow_inlet_spool_bytes") == 0, "the spool did not drain"
        outlet.wait_for(lambda o: o.value("waxflow_outlet_messages_total") >= seq
                        and o.value("waxflow_clickhouse_pending_rows") == 0, 240, "every datagram stored")
        time.sleep(2)
        outlet.kill()
    finally:
        outlet.stop()
        if inlet is not None:
            inlet.stop(60)
        broker.stop()

    spooled = total(during, "waxflow_inlet_kafka_spooled_total")
    assert spooled > 0, "the outage never reached the spool"
    assert total(after, "waxflow_inlet_kernel_drops_total") == 0
    assert total(after, "waxflow_inlet_kafka_discarded_total") == 0
    (row,) = outlet.query("SELECT count() AS n, uniqExact(SrcAddr, DstPort) AS distinct FROM waxflow.flows")[0]
    flows = seq * FLOWS_PER_DATAGRAM
    print(f"sent {flows} flows, {spooled:.0f} messages spooled during the outage; stored {row}")
    assert row["distinct"] == flows, f"lost {flows - row['distinct']} flows"
    assert row["n"] == flows, f"{row['n'] - flows} flows stored twice"
