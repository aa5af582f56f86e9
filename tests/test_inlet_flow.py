"""The whole inlet: a sender → `python -m bytewax.run flows.inlet` → the broker → a consumer."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from connectors.broker import LocalBroker
from flows import envelope
from tests import inlet_process
from tests.conftest import consume_messages, free_port


def run_inlet(tmp_path: Path, broker: LocalBroker, topic: str, *args: str,
              balancing: str = "auto", name: str = "inlet"):
    port, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
    config = inlet_process.write_config(tmp_path / f"{name}.yaml", port=port,
                                        metrics_port=metrics_port, bootstrap=broker.bootstrap,
                                        topic=topic, balancing=balancing)
    inlet = inlet_process.start(config, tmp_path / f"{name}.log", metrics_port, *args,
                                wait_topic=envelope.topic_name(topic), bootstrap=broker.bootstrap)
    return inlet, port


def test_end_to_end_every_datagram_once_byte_identical(tmp_path: Path, broker: LocalBroker,
                                                        topic_name: str) -> None:
    inlet, port = run_inlet(tmp_path, broker, topic_name, "-w", "2")
    try:
        sent = [b"%06d" % i + bytes([i % 256]) * (i % 1400) for i in range(3000)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.bind(("127.0.0.1", 0))
            sender_port = tx.getsockname()[1]
            before = time.time_ns()
            for i, payload in enumerate(sent):
                tx.sendto(payload, ("127.0.0.1", port))
                if i % 500 == 499:
                    time.sleep(0.005)
            after = time.time_ns()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "kafka_acked_total" not in inlet.metrics():
            time.sleep(0.2)
        exposition = inlet.metrics()
    finally:
        code = inlet.stop()
    assert code == 0, inlet.text()[-3000:]

    messages = consume_messages(broker.bootstrap, envelope.topic_name(topic_name), 2)
    decoded = [envelope.decode(value) for _key, value in messages]
    assert sorted(e.payload for e in decoded) == sorted(sent)          # each once, intact
    assert {e.exporter_address for e in decoded} == {"127.0.0.1"}
    assert {e.exporter_port for e in decoded} == {sender_port}
    assert {(e.decoder, e.listener_id) for e in decoded} == {("netflow", 0)}
    assert all(before <= e.received_ns <= after for e in decoded)
    assert {key for key, _ in messages} == {envelope.address_bytes("127.0.0.1")}  # by-exporter
    assert inlet.totals() == {"produced": 3000, "acked": 3000, "failed": 0, "discarded": 0,
                              "unacknowledged": 0}
    assert 'waxflow_inlet_datagrams_total{listener="netflow"' in exposition
    promtool_check(exposition)


def promtool_check(exposition: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # checked wherever Debian's prometheus package is installed (CI installs it)
    result = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_metrics_pass_promtool(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip(reason="promtool not installed (Debian package prometheus)")
    from prometheus_client import CollectorRegistry, generate_latest

    from connectors.metrics import InletMetrics
    registry = CollectorRegistry()
    m = InletMetrics(registry)
    m.datagrams.labels("netflow", "0").inc()
    m.kafka_failed.labels("0", "_MSG_TIMED_OUT").inc()
    m.balancing.labels("netflow", "ebpf").set(1)
    promtool_check(generate_latest(registry).decode())


def test_sigterm_mid_stream_loses_nothing_received(tmp_path: Path, broker: LocalBroker,
                                                    topic_name: str) -> None:
    inlet, port = run_inlet(tmp_path, broker, topic_name, "-w", "2")
    sent: list[bytes] = []
    stop_sending = threading.Event()

    def sender() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            i = 0
            while not stop_sending.is_set() and i < 200_000:
                payload = b"m%08d" % i + b"." * 200
                tx.sendto(payload, ("127.0.0.1", port))
                sent.append(payload)
                i += 1
                if i % 200 == 0:
                    time.sleep(0.001)

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        time.sleep(1.0)
        code = inlet.stop()   # while the sender still sends
    finally:
        stop_sending.set()
        thread.join(10)
    assert code == 0, inlet.text()[-3000:]
    totals = inlet.totals()
    assert totals["produced"] > 0 and totals["failed"] == totals["discarded"] == 0
    assert totals["acked"] == totals["produced"] and totals["unacknowledged"] == 0

    values = [v for _k, v in consume_messages(broker.bootstrap, envelope.topic_name(topic_name), 2)]
    payloads = [envelope.decode(v).payload for v in values]
    assert len(payloads) == len(set(payloads)) == totals["produced"]
    assert set(payloads) <= set(sent)


def test_two_processes_on_one_port_both_receive_under_ebpf(tmp_path: Path, broker: LocalBroker,
                                                            topic_name: str) -> None:
    port, metrics_port = free_port(socket.SOCK_DGRAM), inlet_process.consecutive_ports(2)
    config = inlet_process.write_config(tmp_path / "cluster.yaml", port=port,
                                        metrics_port=metrics_port, bootstrap=broker.bootstrap,
                                        topic=topic_name)
    procs = []
    try:
        procs = inlet_process.start_cluster(config, tmp_path, metrics_port, 2, 1,
                                            envelope.topic_name(topic_name), broker.bootstrap)
        # eBPF selection only becomes exact once both processes joined the map.
        if "balancing ebpf" not in procs[0].text():
            line = next(text for text in procs[0].text().splitlines() if "balancing" in text)
            pytest.skip(reason=f"eBPF does not load here: {line}")
        time.sleep(0.5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(2000):
                tx.sendto(b"c%d" % i, ("127.0.0.1", port))
        deadline = time.monotonic() + 15
        counts = [_datagrams(p.metrics()) for p in procs]
        while sum(counts) < 2000 and time.monotonic() < deadline:
            time.sleep(0.2)
            counts = [_datagrams(p.metrics()) for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        codes = [p.stop() for p in procs]
    assert codes == [0, 0]
    assert all(c > 0 for c in counts), counts
    assert sum(counts) == 2000
    assert abs(counts[0] - 1000) <= 200, counts  # round-robin over both processes' sockets


def _datagrams(exposition: str) -> int:
    total = 0
    for line in exposition.splitlines():
        if line.startswith("waxflow_inlet_datagrams_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_taken_port_stops_startup_with_a_clear_message(tmp_path: Path,
                                                       broker: LocalBroker) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        metrics_port = free_port()
        config = inlet_process.write_config(tmp_path / "taken.yaml", port=port,
                                            metrics_port=metrics_port,
                                            bootstrap=broker.bootstrap, topic="taken")
        with pytest.raises(AssertionError, match="exited with") as info:
            inlet_process.start(config, tmp_path / "taken.log", metrics_port, "-w", "2",
                                timeout=60)
    assert f"listener netflow: cannot bind UDP 127.0.0.1:{port}: Address already in use" in str(info.value)
