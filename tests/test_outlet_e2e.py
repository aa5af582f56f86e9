"""The outlet as users run it (`python -m bytewax.run flows.outlet`), on the real broker and chDB:
every flow arrives, and a kill -9 followed by a restart with recovery loses none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from connectors.broker import LocalBroker
from flows import envelope

EXPORTERS = ["192.0.2.1", "192.0.2.2", "198.51.100.3", "2001:db8::4"]
FLOWS_PER_DATAGRAM = 10


def v5_datagram(seq: int) -> bytes:
    """Ten flows, each identified by its (source port, destination port) pair."""
    records = [NetflowRecordV5(src=f"10.{seq % 250}.0.{j + 1}", dst="203.0.113.9", srcport=seq,
                               dstport=1000 + j, prot=17, dpkts=j + 1, dOctets=100 * (j + 1))
               for j in range(FLOWS_PER_DATAGRAM)]
    packet = NetflowHeader() / NetflowHeaderV5(count=len(records), unixSecs=int(time.time()),
                                               flowSequence=seq)
    for record in records:
        packet = packet / record
    return bytes(packet)


def produce(bootstrap: str, topic: str, first: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for seq in range(first, first + count):
        exporter = EXPORTERS[seq % len(EXPORTERS)]
        value = envelope.encode("netflow", 0, time.time_ns(), exporter, 2055, v5_datagram(seq))
        producer.produce(topic, key=envelope.address_bytes(exporter), value=value)
    assert producer.flush(20) == 0


def expected_flows(count: int) -> set[tuple[int, int]]:
    return {(seq, 1000 + j) for seq in range(count) for j in range(FLOWS_PER_DATAGRAM)}


class Outlet:
    """One `python -m bytewax.run flows.outlet` process in a working directory of its own."""

    def __init__(self, workdir: Path, workers: int = 2) -> None:
        self.workdir = workdir
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        recovery = self.workdir / "recovery"
        if not recovery.exists():
            recovery.mkdir()
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True,
                           cwd=self.workdir, timeout=60)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.outlet", "-w", str(self.workers),
             "-r", str(recovery), "-s", "1", "-b", "0"],
            cwd=self.workdir, stdout=open(self.workdir / "outlet.log", "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})

    def kill(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, (self.workdir / "outlet.log").read_text()[-3000:]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=5)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def wait_consumed(bootstrap: str, group: str, topic: str, total: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if committed(bootstrap, group, topic, 2) >= total:
            return
        time.sleep(0.5)
    raise AssertionError(f"outlet consumed {committed(bootstrap, group, topic, 2)} of {total}")


def stored_flows(workdir: Path) -> list[tuple[int, int]]:
    """Read the store from a separate process: chDB lets one process own its directory."""
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "query", "--format", "jsonl",
         "SELECT SrcPort, DstPort, Bytes, Packets, ExporterName FROM waxflow.flows"],
        cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for row in rows:
        j = row["DstPort"] - 1000
        assert (row["Bytes"], row["Packets"]) == (100 * (j + 1), j + 1)
        assert row["ExporterName"] == EXPORTERS[row["SrcPort"] % len(EXPORTERS)]
    return [(row["SrcPort"], row["DstPort"]) for row in rows]


@pytest.mark.slow
def test_kill_and_restart_with_recovery_loses_no_flow(broker: LocalBroker, topic_name: str,
                                                      tmp_path: Path) -> None:
    topic = envelope.topic_name(topic_name)
    group = f"outlet-{topic_name}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    (tmp_path / "dataflows.yaml").write_text(
        f"kafka: {{brokers: ['{broker.bootstrap}'], topic: {topic_name}, consumer_group: {group},"
        " start_offset: committed}\n"
        "clickhouse: {dsn: 'chdb:data/clickhouse', batch_wait: 1s, batch_rows: 200}\n")
    outlet = Outlet(tmp_path)

    produce(broker.bootstrap, topic, 0, 200)
    outlet.start()
    wait_consumed(broker.bootstrap, group, topic, 200)
    time.sleep(3)  # a flush (1 s) and snapshots (1 s) have happened
    produce(broker.bootstrap, topic, 200, 100)
    time.sleep(0.3)  # mid-stream: consumed in part, not yet snapshotted
    outlet.kill()

    produce(broker.bootstrap, topic, 300, 100)
    outlet.start()
    wait_consumed(broker.bootstrap, group, topic, 400)
    time.sleep(3)
    outlet.kill()

    stored = stored_flows(tmp_path)
    assert set(stored) == expected_flows(400)  # nothing missing, nothing foreign
    duplicates = len(stored) - len(set(stored))
    # Replays after the kill are bounded by what one snapshot interval (plus the batch in
    # flight) covered: at most the 100 datagrams produced after the last full snapshot.
    assert duplicates <= 100 * FLOWS_PER_DATAGRAM + 200
    print(f"flows stored {len(stored)}, distinct {len(set(stored))}, duplicates {duplicates}")
