"""The ClickHouse sink on a real chDB store: batching, snapshots, retries while inserts fail, and
exactly-once delivery (a replay dropped by the marks, a block left in the delivery log inserted
again without doubling `flows` or the aggregated tables)."""

from __future__ import annotations

import ipaddress
import threading
import time
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from connectors import clickhouse, clickhouse_sink
from connectors.delivery_log import DeliveryLog
from flows import schema
from flows.delivery import coverage, origin, with_origins, without_origins
from flows.settings import ClickHouse

EXPORTER = "192.0.2.9"
NOW = int(time.time())


def flows_batch(n: int, start: int = 0, partition: int = 0, received: int = NOW) -> pa.RecordBatch:
    """n flows of one exporter from the Kafka offsets start..start+n-1 (one flow per message)."""
    exporter = ipaddress.IPv6Address(f"::ffff:{EXPORTER}").packed
    batch = schema.make_batch({
        "TimeReceived": [received] * n,
        "ExporterAddress": [exporter] * n,
        "SrcPort": [(start + i) % 65536 for i in range(n)],
        "Bytes": [100] * n,
        "Packets": [1] * n,
    }, n)
    return with_origins(batch, np.array([origin(partition, start + i) for i in range(n)], np.int64))


def item(n: int, start: int = 0, **kwargs) -> tuple[str, pa.RecordBatch]:
    return EXPORTER, flows_batch(n, start, **kwargs)


def count(cfg: ClickHouse, table: str = "flows", what: str = "count()") -> int:
    return clickhouse.connect(cfg).query(f"SELECT {what} FROM `{cfg.database}`.{table}").result_rows[0][0]


@pytest.fixture
def delivery(tmp_path):
    return tmp_path / "delivery"


@pytest.fixture
def sink_partition(store: ClickHouse, delivery):
    clickhouse.migrate(store)

    def build(cfg: ClickHouse, resume=None):
        return clickhouse_sink.ClickHouseSink(cfg, delivery).build_part("clickhouse", "chdb", resume)

    return build


def test_flushes_on_size_and_on_time(store: ClickHouse, sink_partition) -> None:
    cfg = store.model_copy(update={"batch_rows": 1000, "batch_wait": timedelta(seconds=0.3)})
    part = sink_partition(cfg)
    part.write_batch([item(600)])
    assert count(cfg) == 0  # below batch_rows and not yet due
    part.write_batch([item(600, 600)])
    part.wait_inserted()
    assert count(cfg) == 1200  # size reached
    part.write_batch([item(10, 1200)])
    time.sleep(0.35)
    part.write_batch([(EXPORTER, None)])  # a tick from the decode step
    part.wait_inserted()
    assert count(cfg) == 1210


def test_snapshot_carries_pending_rows_to_a_new_partition(store: ClickHouse, sink_partition) -> None:
    cfg = store.model_copy(update={"batch_rows": 10_000, "batch_wait": timedelta(hours=1)})
    part = sink_partition(cfg)
    part.write_batch([item(300), (EXPORTER, None), item(200, 300)])
    state = part.snapshot()
    assert state and count(cfg) == 0
    # The worker dies here without flushing; a restart resumes from the snapshot.
    resumed = sink_partition(cfg, state)
    resumed.close()
    assert count(cfg) == 500
    assert sink_partition(cfg).snapshot() == []


def test_inserts_retry_while_the_store_refuses(store: ClickHouse, sink_partition, monkeypatch) -> None:
    """The store refuses inserts for a while (the table is away); the sink holds the rows (in its
    snapshot too), counts the retries, stops the worker at the next flush (back-pressure), and
    inserts everything once the store accepts again."""
    monkeypatch.setattr(clickhouse_sink, "BACKOFF_START", 0.05)
    cfg = store.model_copy(update={"batch_rows": 100})
    part = sink_partition(cfg)
    client = clickhouse.connect(cfg)
    retries_before = clickhouse_sink.RETRIES._value.get()
    # The table is away for a while (as during a maintenance rename), then comes back.
    client.command(f"RENAME TABLE `{cfg.database}`.flows TO `{cfg.database}`.flows_away")
    part.write_batch([item(150)])  # due: handed to the insert thread, which retries
    deadline = time.monotonic() + 10
    while clickhouse_sink.RETRIES._value.get() == retries_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert clickhouse_sink.RETRIES._value.get() > retries_before
    held = part.snapshot()
    assert sum(b.num_rows for _, b in held) == 150  # in flight, still in the snapshot

    def restore() -> None:
        time.sleep(0.6)
        client.command(f"RENAME TABLE `{cfg.database}`.flows_away TO `{cfg.database}`.flows")

    fixer = threading.Thread(target=restore)
    fixer.start()
    started = time.monotonic()
    part.write_batch([item(150, 150)])  # the next flush waits for the first insert
    assert time.monotonic() - started >= 0.3
    fixer.join()
    part.close()
    assert count(cfg) == 300
    assert part.snapshot() == []


def test_a_closed_client_is_replaced(store: ClickHouse, sink_partition, monkeypatch) -> None:
    monkeypatch.setattr(clickhouse_sink, "BACKOFF_START", 0.01)
    cfg = store.model_copy(update={"batch_rows": 10})
    part = sink_partition(cfg)
    errors_before = clickhouse_sink.ERRORS.labels("closed")._value.get()
    part.client.close()
    part.write_batch([item(20)])
    part.wait_inserted()
    assert clickhouse_sink.ERRORS.labels("closed")._value.get() > errors_before
    assert count(cfg) == 20


def stored_sums(cfg: ClickHouse) -> list[int]:
    """flows' rows and bytes, and the bytes of each aggregated table."""
    return [count(cfg), count(cfg, what="sum(Bytes)")] + [
        count(cfg, table, "sum(Bytes)") for table in ("flows_1m0s", "flows_5m0s", "flows_1h0m0s")]


def test_a_replay_of_stored_rows_is_dropped_by_the_marks(store: ClickHouse, sink_partition) -> None:
    """A crash after an insert, before the next snapshot: the restart resumes from the older
    snapshot (pending rows 0..299) and the replay brings offsets 300..699 again, cut
    differently; only what was never stored (700..899) is inserted."""
    cfg = store.model_copy(update={"batch_rows": 250, "batch_wait": timedelta(hours=1)})
    part = sink_partition(cfg)
    part.write_batch([item(200), item(100, 200)])
    snapshot = part.snapshot()  # 300 rows pending... then inserted, with what follows
    part.write_batch([item(400, 300)])
    part.wait_inserted()
    assert count(cfg) == 700
    before = clickhouse_sink.ALREADY_STORED._value.get()
    resumed = sink_partition(cfg, snapshot)  # the process died; recovery brings the old snapshot
    resumed.write_batch([item(150, 300), item(450, 450)])  # replayed 300..899
    resumed.close()
    assert stored_sums(cfg) == [900, 90_000, 90_000, 90_000, 90_000]
    assert clickhouse_sink.ALREADY_STORED._value.get() - before == 300 + 150 + 250  # 0..699 again


def test_a_block_left_in_the_log_is_inserted_once_even_if_the_store_had_it(
        store: ClickHouse, sink_partition, delivery) -> None:
    """Killed during an insert: whether the store took the block, took it into `flows` only, or
    not at all, the restart inserts it again with its token and every table has it once."""
    cfg = store.model_copy(update={"batch_rows": 10_000, "batch_wait": timedelta(hours=1)})
    sink_partition(cfg).close()
    client = clickhouse.connect(cfg)
    db = cfg.database
    # several record batches per block, as the sink's blocks have: the store deduplicates a
    # replay block by block, so the replay must be cut the same way
    blocks = [[item(50, 1000 * k), item(50, 1000 * k + 50)] for k in range(3)]
    log = DeliveryLog(delivery / "chdb")
    written = []
    for _k, items in enumerate(blocks):
        table = pa.Table.from_batches([without_origins(b) for _, b in items]).combine_chunks()
        path, token = log.write(table, coverage(items))
        written.append((path, token, table))
    settings = {**clickhouse_sink.INSERT_SETTINGS}
    # block 0: the store took it whole; block 1: only into flows (the views' tables missed it);
    # block 2: never reached the store.
    client.insert_arrow(f"{db}.flows", written[0][2], settings={**settings, "insert_deduplication_token": written[0][1]})
    client.command(f"DETACH TABLE `{db}`.flows_1m0s_consumer")
    client.insert_arrow(f"{db}.flows", written[1][2], settings={**settings, "insert_deduplication_token": written[1][1]})
    client.command(f"ATTACH TABLE `{db}`.flows_1m0s_consumer")
    log.close()
    assert count(cfg) == 200 and count(cfg, "flows_1m0s", "sum(Bytes)") == 10_000
    replayed = clickhouse_sink.REPLAYED_BLOCKS._value.get()
    part = sink_partition(cfg)
    assert clickhouse_sink.REPLAYED_BLOCKS._value.get() - replayed == 3
    assert not list((delivery / "chdb" / "blocks").iterdir())
    assert stored_sums(cfg) == [300, 30_000, 30_000, 30_000, 30_000]
    # ...and the marks now cover those rows: their replay from Kafka is dropped.
    part.write_batch([item(100, 1000 * k) for k in range(3)] + [item(5, 5000)])
    part.close()
    assert count(cfg) == 305


def test_a_partition_whose_offsets_started_again_is_not_taken_for_a_replay(
        store: ClickHouse, sink_partition) -> None:
    """A broker that lost its data serves offsets from 0 again: rows received after what was
    stored are new, even at offsets the marks cover."""
    cfg = store.model_copy(update={"batch_rows": 10})
    part = sink_partition(cfg)
    part.write_batch([item(50, 0, received=NOW - 60)])
    part.wait_inserted()
    part.write_batch([item(20, 0, received=NOW)])
    part.close()
    assert count(cfg) == 70


def test_the_marks_survive_a_restart_and_are_kept_per_exporter_and_partition(
        store: ClickHouse, sink_partition) -> None:
    cfg = store.model_copy(update={"batch_rows": 10})
    part = sink_partition(cfg)
    part.write_batch([item(30, 0, partition=1), ("192.0.2.10", flows_batch(30, 0, partition=1))])
    part.close()
    again = sink_partition(cfg)
    again.write_batch([item(40, 0, partition=1), item(10, 0, partition=2),
                       ("192.0.2.10", flows_batch(30, 0, partition=1))])
    again.close()
    assert count(cfg) == 30 + 30 + 10 + 10


def test_a_sink_killed_between_insert_and_acknowledgement_stores_its_block_once(
        store: ClickHouse, sink_partition, monkeypatch) -> None:
    """The sink's own blocks (many items each): the insert went through, the process died
    before the marks moved; the restart inserts the block again and the store drops it."""
    cfg = store.model_copy(update={"batch_rows": 1000, "batch_wait": timedelta(hours=1)})
    part = sink_partition(cfg)

    class Killed(BaseException):
        pass

    def die(*_args) -> None:
        raise Killed()

    monkeypatch.setattr(part.log, "acknowledged", die)
    part.write_batch([item(100, 100 * k) for k in range(10)])  # 1,000 rows: due, 10 record batches
    with pytest.raises(Killed):
        part.wait_inserted()
    assert count(cfg) == 1000
    monkeypatch.undo()
    resumed = sink_partition(cfg, part.in_flight + part.pending)  # what its last snapshot held
    resumed.close()
    assert stored_sums(cfg) == [1000, 100_000, 100_000, 100_000, 100_000]
