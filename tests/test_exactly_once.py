"""Exactly-once from Kafka message to row (issue 13): a stream of 200,000 flows with unique ids
goes through the outlet as users start it (`waxflow run outlet`, recovery with 1 s snapshots;
two workers, or two processes of which the second sends its rows to the first, the one owning
the embedded store) while the outlet is killed with SIGKILL at random points — before its first snapshot, soon after
a restart, during inserts — and restarted each time. Every flow is stored once in `flows`, and
the 1m/5m/1h tables hold exactly the stream's sums."""

from __future__ import annotations

import os
import random
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

EXPORTERS = [f"192.0.2.{i}" for i in range(1, 7)] + ["2001:db8::a", "2001:db8::b"]
PARTITIONS = 4
FLOWS_PER_DATAGRAM = 25
DATAGRAMS = 8_000  # 200,000 flows
RATE = 4_000  # flows/s produced
KILLS = 5


def v5_datagram(seq: int) -> bytes:
    """NetFlow v5 whose record j is flow (seq, j): source 10.a.b.c spells seq, destination
    port 1000 + j; j + 1 packets of 100 bytes each."""
    now = int(time.time())
    header = struct.pack("!HHIIIIBBH", 5, FLOWS_PER_DATAGRAM, 100_000, now, 0, seq, 0, 0, 0)
    records = b"".join(
        struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", bytes([10, seq >> 16 & 255, seq >> 8 & 255, seq & 255]),
                    bytes([203, 0, 113, 9]), bytes(4), 1, 2, j + 1, 100 * (j + 1), 99_000, 99_500,
                    40_000, 1000 + j, 0, 0, 17, 0, 0, 0, 24, 24, 0)
        for j in range(FLOWS_PER_DATAGRAM))
    return header + records


def stream(bootstrap: str, topic: str, done: threading.Event) -> None:
    """Produce the datagrams at RATE flows/s, each keyed by its exporter as the inlet does."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    started = time.monotonic()
    per_datagram = FLOWS_PER_DATAGRAM / RATE
    for seq in range(DATAGRAMS):
        exporter = EXPORTERS[seq % len(EXPORTERS)]
        value = envelope.encode("netflow", 0, time.time_ns(), exporter, 2055, v5_datagram(seq))
        producer.produce(topic, key=envelope.address_bytes(exporter), value=value)
        producer.poll(0)
        ahead = started + (seq + 1) * per_datagram - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    assert producer.flush(60) == 0
    done.set()


@pytest.mark.parametrize("workers,processes", [(2, 1), (1, 2)], ids=["2-workers", "2-processes"])
def test_random_kills_lose_nothing_and_double_nothing(broker: LocalBroker, topic_name: str, tmp_path: Path,
                                                      workers: int, processes: int) -> None:
    topic, api_port = envelope.topic_name(topic_name), free_port()
    create_topic(broker.bootstrap, topic, PARTITIONS)
    config = write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic_name, api_port=api_port,
                          start_offset="committed", batch_rows=5_000, batch_wait="1s")
    outlet = Outlet(config, api_port, workers=workers, processes=processes, snapshot_seconds=1,
                    cluster_ports=[free_port() for _ in range(processes)])
    rng = random.Random()
    seed = int(os.environ.get("WAXFLOW_TEST_SEED") or rng.randrange(1 << 30))  # (to replay a failure's kills)
    rng.seed(seed)
    produced = threading.Event()
    producer = threading.Thread(target=stream, args=(broker.bootstrap, topic, produced), daemon=True)
    kills = []
    try:
        outlet.start()
        producer.start()
        for _ in range(KILLS):
            # 0.5-6 s after a start: before its first snapshot, during its replay, or later
            # (mid-insert with 5,000-row batches at this rate).
            wait = rng.uniform(0.5, 6.0)
            time.sleep(wait)
            outlet.kill()
            kills.append(round(wait, 2))
            outlet.start()
        producer.join(120)
        assert produced.is_set(), "the producer did not finish"
        outlet.wait_for(lambda o: o.value("waxflow_outlet_messages_total") > 0
                        and o.value("waxflow_clickhouse_pending_rows") == 0
                        and o.value("waxflow_kafka_consumer_lag") == 0, 240, "the stream caught up")
        time.sleep(3)
        outlet.kill()
    finally:
        outlet.stop()

    total = DATAGRAMS * FLOWS_PER_DATAGRAM
    bytes_total = DATAGRAMS * sum(100 * (j + 1) for j in range(FLOWS_PER_DATAGRAM))
    packets_total = DATAGRAMS * sum(j + 1 for j in range(FLOWS_PER_DATAGRAM))
    flows, *aggregates = outlet.query(
        "SELECT count() AS n, uniqExact(SrcAddr, DstPort) AS distinct, sum(Bytes) AS bytes, "
        "sum(Packets) AS packets FROM waxflow.flows",
        *(f"SELECT sum(Bytes) AS bytes, sum(Packets) AS packets FROM waxflow.{table}"
          for table in ("flows_1m0s", "flows_5m0s", "flows_1h0m0s")))
    what = f"kills after {kills} s (seed {seed})"
    row = flows[0]
    assert row["distinct"] == total, f"lost {total - row['distinct']} flows; {what}"
    assert row["n"] == total, f"{row['n'] - total} duplicated rows; {what}"
    assert (row["bytes"], row["packets"]) == (bytes_total, packets_total), what
    for table, (agg,) in zip(("1m", "5m", "1h"), aggregates):
        assert (agg["bytes"], agg["packets"]) == (bytes_total, packets_total), f"flows_{table}: {what}"
