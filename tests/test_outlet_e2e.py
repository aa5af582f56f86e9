"""Delivery: the outlet as users start it (`waxflow run outlet`, which prepares the recovery store
and runs `python -m bytewax.run flows.outlet -r ... -s 1 -b 0`), killed with SIGKILL mid-stream
and restarted, loses no flow and stores none twice (tests/test_exactly_once.py kills it at
random points; this one at fixed ones, with two workers)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.broker import LocalBroker
from connectors.launcher import recovery_dir
from flows import envelope
from tests.conftest import free_port
from tests.outlet_process import (
    FLOWS_PER_DATAGRAM,
    Outlet,
    create_topic,
    expected_v5_flows,
    produce,
    v5_messages,
    write_config,
)

EXPORTERS = ["192.0.2.1", "192.0.2.2", "198.51.100.3", "2001:db8::4"]
PARTITIONS = 2


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=5)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def wait_consumed(outlet: Outlet, bootstrap: str, group: str, topic: str, total: int) -> None:
    """Until the outlet's consumers have committed `total` offsets (tansu's "latest offset" is
    wrong, so the lag gauge cannot say "caught up" here) and nothing is pending."""
    outlet.wait_for(lambda o: committed(bootstrap, group, topic) >= total
                    and o.value("waxflow_clickhouse_pending_rows") == 0, 90,
                    f"{total} messages consumed and inserted")


def produce_and_restart(outlet: Outlet, bootstrap: str, group: str, topic: str, seqs: range) -> None:
    """Produce `seqs` to the stopped outlet, start it, wait until it has consumed up to the
    last of them and inserted everything, and kill it."""
    produce(bootstrap, topic, v5_messages(seqs, EXPORTERS))
    outlet.start()
    wait_consumed(outlet, bootstrap, group, topic, seqs.stop)
    outlet.kill()


@pytest.mark.slow
def test_kill_and_restart_with_recovery_loses_and_doubles_no_flow(broker: LocalBroker, topic_name: str,
                                                      tmp_path: Path) -> None:
    topic, group, api_port = envelope.topic_name(topic_name), f"outlet-{topic_name}", free_port()
    create_topic(broker.bootstrap, topic, PARTITIONS)
    config = write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic_name, api_port=api_port,
                          consumer_group=group, start_offset="committed", batch_rows=200,
                          batch_wait="1s")
    outlet = Outlet(config, api_port, workers=2, snapshot_seconds=1)
    try:
        produce(broker.bootstrap, topic, v5_messages(range(0, 200), EXPORTERS))
        outlet.start()
        wait_consumed(outlet, broker.bootstrap, group, topic, 200)
        time.sleep(2.5)  # snapshots (every 1 s) have covered everything so far
        produce(broker.bootstrap, topic, v5_messages(range(200, 300), EXPORTERS))
        time.sleep(0.3)  # mid-stream: consumed in part, not yet snapshotted
        outlet.kill()
        # the launcher made the recovery store where users would look for it
        assert sorted(recovery_dir(tmp_path / "data", "outlet").glob("part-*.sqlite3"))

        produce_and_restart(outlet, broker.bootstrap, group, topic, range(300, 400))
    finally:
        outlet.stop()

    (rows,) = outlet.query("SELECT SrcPort, DstPort, Bytes, Packets, ExporterName FROM waxflow.flows")
    for row in rows:
        j = row["DstPort"] - 1000
        assert (row["Bytes"], row["Packets"]) == (100 * (j + 1), j + 1)
        assert row["ExporterName"] == EXPORTERS[row["SrcPort"] % len(EXPORTERS)]
    stored = [(row["SrcPort"], row["DstPort"]) for row in rows]
    assert set(stored) == expected_v5_flows(range(400))  # nothing missing, nothing foreign
    assert len(stored) == len(set(stored)) == 400 * FLOWS_PER_DATAGRAM  # the replay was dropped


@pytest.mark.slow
def test_offsets_committed_before_a_durable_snapshot_lose_no_flow(broker: LocalBroker, topic_name: str,
                                                                  tmp_path: Path) -> None:
    """The group's offset is committed when the source takes its snapshot, before Bytewax has
    made the sink's snapshot (rows read, not yet inserted) durable. A kill in between leaves a
    committed offset and no snapshot: the state made here, deterministically, by removing the
    recovery store after the kill. The restart must not skip the rows that were pending."""
    topic, group, api_port = envelope.topic_name(topic_name), f"outlet-{topic_name}", free_port()
    create_topic(broker.bootstrap, topic, PARTITIONS)
    per_insert = 20 * FLOWS_PER_DATAGRAM
    # Inserts of 20 datagrams' rows; the rest waits (batch_wait far off) in the sink, held only
    # by its snapshot.
    config = write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic_name, api_port=api_port,
                          consumer_group=group, start_offset="committed", batch_rows=per_insert,
                          batch_wait="10m")
    outlet = Outlet(config, api_port, workers=2, snapshot_seconds=1)
    try:
        outlet.start()
        produce(broker.bootstrap, topic, v5_messages(range(0, 20), EXPORTERS))
        outlet.wait_for(lambda o: o.value("waxflow_clickhouse_rows_total") >= per_insert, 90, "one insert")
        produce(broker.bootstrap, topic, v5_messages(range(20, 30), EXPORTERS))
        outlet.wait_for(lambda o: committed(broker.bootstrap, group, topic) >= 30
                        and o.value("waxflow_clickhouse_pending_rows") > 0, 90,
                        "30 messages committed, 10 datagrams' rows pending")
        outlet.kill()
        shutil.rmtree(recovery_dir(tmp_path / "data", "outlet"))  # the snapshot never made durable

        produce_and_restart(outlet, broker.bootstrap, group, topic, range(30, 50))
    finally:
        outlet.stop()

    (rows,) = outlet.query("SELECT SrcPort, DstPort FROM waxflow.flows")
    stored = [(row["SrcPort"], row["DstPort"]) for row in rows]
    assert set(stored) == expected_v5_flows(range(50)), "rows pending at the kill were skipped"
    assert len(stored) == 50 * FLOWS_PER_DATAGRAM, "the re-read rows already stored were stored again"
