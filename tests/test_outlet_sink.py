"""The ClickHouse sink on a real chDB store: batching, snapshots, retries while inserts fail."""

from __future__ import annotations

import ipaddress
import threading
import time
from datetime import timedelta

import pyarrow as pa

from connectors import clickhouse
from flows import schema
from flows.settings import ClickHouse


def flows_batch(n: int, start: int = 0) -> pa.RecordBatch:
    exporter = ipaddress.IPv6Address("::ffff:192.0.2.9").packed
    return schema.make_batch({
        "TimeReceived": [int(time.time())] * n,
        "ExporterAddress": [exporter] * n,
        "SrcPort": [(start + i) % 65536 for i in range(n)],
        "Bytes": [100] * n,
        "Packets": [1] * n,
    }, n)


def count(cfg: ClickHouse) -> int:
    return clickhouse.connect(cfg).query(f"SELECT count() FROM `{cfg.database}`.flows").result_rows[0][0]


def sink_partition(cfg: ClickHouse, resume: bytes | None = None):
    return clickhouse.ClickHouseSink(cfg).build_part("clickhouse", "chdb", resume)


def test_flushes_on_size_and_on_time(store: ClickHouse) -> None:
    cfg = store.model_copy(update={"batch_rows": 1000, "batch_wait": timedelta(seconds=0.3)})
    part = sink_partition(cfg)
    part.write_batch([flows_batch(600)])
    assert count(cfg) == 0  # below batch_rows and not yet due
    part.write_batch([flows_batch(600, 600)])
    part.wait_inserted()
    assert count(cfg) == 1200  # size reached
    part.write_batch([flows_batch(10, 1200)])
    time.sleep(0.35)
    part.write_batch([None])  # a tick from the decode step
    part.wait_inserted()
    assert count(cfg) == 1210


def test_snapshot_carries_pending_rows_to_a_new_partition(store: ClickHouse) -> None:
    cfg = store.model_copy(update={"batch_rows": 10_000, "batch_wait": timedelta(hours=1)})
    part = sink_partition(cfg)
    part.write_batch([flows_batch(300), None, flows_batch(200, 300)])
    state = part.snapshot()
    assert state is not None and count(cfg) == 0
    # The worker dies here without flushing; a restart resumes from the snapshot.
    resumed = sink_partition(cfg, state)
    resumed.close()
    assert count(cfg) == 500
    assert sink_partition(cfg).snapshot() is None


def test_inserts_retry_while_the_store_refuses(store: ClickHouse, monkeypatch) -> None:
    """The store refuses inserts for a while (the table is away); the sink holds the rows (in its
    snapshot too), counts the retries, stops the worker at the next flush (back-pressure), and
    inserts everything once the store accepts again."""
    monkeypatch.setattr(clickhouse, "BACKOFF_START", 0.05)
    cfg = store.model_copy(update={"batch_rows": 100})
    part = sink_partition(cfg)
    client = clickhouse.connect(cfg)
    retries_before = clickhouse.RETRIES._value.get()
    # The table is away for a while (as during a maintenance rename), then comes back.
    client.command(f"RENAME TABLE `{cfg.database}`.flows TO `{cfg.database}`.flows_away")
    part.write_batch([flows_batch(150)])  # due: handed to the insert thread, which retries
    deadline = time.monotonic() + 10
    while clickhouse.RETRIES._value.get() == retries_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert clickhouse.RETRIES._value.get() > retries_before
    held = clickhouse._from_ipc(part.snapshot())
    assert sum(b.num_rows for b in held) == 150  # in flight, still in the snapshot

    def restore() -> None:
        time.sleep(0.6)
        client.command(f"RENAME TABLE `{cfg.database}`.flows_away TO `{cfg.database}`.flows")

    fixer = threading.Thread(target=restore)
    fixer.start()
    started = time.monotonic()
    part.write_batch([flows_batch(150, 150)])  # the next flush waits for the first insert
    assert time.monotonic() - started >= 0.3
    fixer.join()
    part.close()
    assert count(cfg) == 300
    assert part.snapshot() is None


def test_a_closed_client_is_replaced(store: ClickHouse, monkeypatch) -> None:
    monkeypatch.setattr(clickhouse, "BACKOFF_START", 0.01)
    cfg = store.model_copy(update={"batch_rows": 10})
    part = sink_partition(cfg)
    errors_before = clickhouse.ERRORS.labels("closed")._value.get()
    part.client.close()
    part.write_batch([flows_batch(20)])
    part.wait_inserted()
    assert clickhouse.ERRORS.labels("closed")._value.get() > errors_before
    assert count(cfg) == 20
