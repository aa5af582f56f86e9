"""The outlet's sink: flow batches → ClickHouse `flows`, each row exactly once.

Items are (exporter, batch) with the rows' origins (flows/delivery.py), or (exporter, None):
a tick the decode step sends so that a quiet stream is still flushed after `batch_wait`.

One insert at a time per sink partition, on a thread of its own while the worker goes on
decoding (chDB and the HTTP client release the GIL); a slow or refusing store stops the worker
at the next flush (back-pressure) instead of piling up rows. Each insert is:

1. the block written to the partition's delivery log (connectors/delivery_log.py) with a new
   deduplication token and the marks it reaches;
2. inserted with that token (`insert_deduplication_token`; the tables keep a deduplication
   window, flows/ddl.py), retried with backoff until the store takes it;
3. acknowledged: marks advanced durably, the block forgotten.

At start, blocks left in the log are inserted again (ClickHouse drops what it already has, in
`flows` and in each view's table), and rows that the recovery replay brings again — from the
snapshot's pending rows or from Kafka — are dropped by the marks. The snapshot holds the rows
not yet acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from prometheus_client import Counter, Gauge, Histogram

from connectors.clickhouse import connect, reconnect
from connectors.cluster import process_id
from connectors.delivery_log import DeliveryLog
from flows import schema
from flows.delivery import Marks, coverage, with_origins, without_origins
from flows.ratelimit import RateLimitedLog
from flows.settings import ClickHouse

log = logging.getLogger(__name__)

ROWS = Counter("waxflow_clickhouse_rows_total", "flow rows inserted into ClickHouse")
BATCHES = Counter("waxflow_clickhouse_batches_total", "insert batches committed to ClickHouse")
INSERT_SECONDS = Histogram("waxflow_clickhouse_insert_seconds", "time to insert one batch",
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES = Counter("waxflow_clickhouse_retries_total", "insert attempts that failed and were retried")
ERRORS = Counter("waxflow_clickhouse_errors_total", "failed inserts by reason (readonly, closed, "
                 "connection, storage, other; delivery_log: the sink's own log could not be written)",
                 ["reason"])
PENDING = Gauge("waxflow_clickhouse_pending_rows", "rows buffered, waiting for the next insert")
FAILING_SINCE = Gauge("waxflow_clickhouse_failing_since_seconds",
                      "unix time of the first failed insert since the last one that succeeded (0: none failing)")
REPLAYED_BLOCKS = Counter("waxflow_clickhouse_replayed_blocks_total",
                          "blocks found in the delivery log at start (an insert the previous run did not see "
                          "acknowledged) and inserted again with their deduplication token")
ALREADY_STORED = Counter("waxflow_outlet_already_stored_rows_total",
                         "rows a recovery replay brought again and the sink dropped: already stored")


class _InsertHealth:
    """When inserts started failing in this process (None: the last one succeeded), for /healthz."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failing_since: float | None = None

    def failed(self) -> None:
        with self._lock:
            if self.failing_since is None:
                self.failing_since = time.time()
                FAILING_SINCE.set(self.failing_since)

    def succeeded(self) -> None:
        with self._lock:
            self.failing_since = None
            FAILING_SINCE.set(0)

    def failing_for(self) -> float:
        """Seconds inserts have been failing, 0 when they are not."""
        since = self.failing_since
        return 0.0 if since is None else max(0.0, time.time() - since)


INSERT_HEALTH = _InsertHealth()

# The three aggregating views of `flows` are filled on threads of their own rather than one
# after the other: they are most of an insert's work (measured in bench/outlet.py). A block
# inserted again after a crash must reach the views' tables that missed it, and only those.
INSERT_SETTINGS = {"parallel_view_processing": 1, "insert_deduplicate": 1,
                   "deduplicate_blocks_in_dependent_materialized_views": 1}
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
_ratelimited = RateLimitedLog(log)

# The store's disk refuses writes: permissions, a read-only or full filesystem.
_STORAGE_ERRORS = ("filesystem error", "permission denied", "operation not permitted",
                   "read-only file system", "no space left", "not enough space")


def _error_reason(err: Exception) -> str:
    """One of a fixed set of reasons, from the error's text (clients raise many types)."""
    text = str(err).lower()
    if any(m in text for m in _STORAGE_ERRORS):
        return "storage"
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "readonly"
    if "closed" in text:
        return "closed"
    if "connection" in text or "timed out" in text or "timeout" in text:
        return "connection"
    return "other"


Item = tuple[str, pa.RecordBatch | None]


class _ClickHousePartition(StatefulSinkPartition[Item, list]):
    def __init__(self, cfg: ClickHouse, directory: Path, resume: list | None) -> None:
        self.cfg = cfg
        self.client = connect(cfg)
        self.table = f"{cfg.database}.flows"
        self.log = DeliveryLog(directory)
        self.marks = Marks(self.log.marks())
        for path in self.log.pending():
            self._replay(path)
        self.pending: list[tuple[str, pa.RecordBatch]] = []
        self.rows = 0
        self.first_at: float | None = None
        self.in_flight: list[tuple[str, pa.RecordBatch]] = []
        self.inserting: Future | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse-insert")
        self.write_batch(resume or [])

    # --- Bytewax callbacks ---

    def write_batch(self, values: list[Item]) -> None:
        for exporter, batch in values:
            if batch is None or not batch.num_rows:
                continue
            kept = self.marks.unstored(exporter, batch)
            if kept.num_rows < batch.num_rows:
                ALREADY_STORED.inc(batch.num_rows - kept.num_rows)
            if not kept.num_rows:
                continue
            if self.first_at is None:
                self.first_at = time.monotonic()
            self.pending.append((exporter, kept))
            self.rows += kept.num_rows
            PENDING.inc(kept.num_rows)
        if self.inserting is not None and self.inserting.done():
            self.wait_inserted()  # frees the rows and surfaces a failure promptly
        if self._due():
            self.flush()

    def snapshot(self) -> list:
        if self.inserting is not None and self.inserting.done():
            self.wait_inserted()  # acknowledged rows need not be replayed
        # The block in flight is in the delivery log too; kept here as well, a restart drops it
        # by the marks once the log's copy is stored.
        return self.in_flight + self.pending

    def close(self) -> None:
        self.flush()
        self.wait_inserted()
        self.executor.shutdown()
        self.log.close()

    # --- batching ---

    def _due(self) -> bool:
        if not self.rows:
            return False
        if self.rows >= self.cfg.batch_rows:
            return True
        return time.monotonic() - self.first_at >= self.cfg.batch_wait.total_seconds()

    def flush(self) -> None:
        """Start inserting everything pending, once the previous insert has finished."""
        self.wait_inserted()
        if not self.rows:
            return
        self.in_flight, rows = self.pending, self.rows
        self.pending, self.rows, self.first_at = [], 0, None
        self.inserting = self.executor.submit(self._deliver, self.in_flight, rows)

    def wait_inserted(self) -> None:
        """Block until the insert in flight (with its retries) has been acknowledged."""
        if self.inserting is not None:
            reached = self.inserting.result()
            self.marks.advance(reached)
            forgotten = self.marks.take_forgotten()
            if forgotten:
                self.log.forget(forgotten)
            self.inserting, self.in_flight = None, []

    # --- inserting (on the insert thread, and at start) ---

    def _deliver(self, items: list[tuple[str, pa.RecordBatch]], rows: int) -> dict:
        reached = coverage(items)
        # One record batch: the block written and the one inserted must be cut into the same
        # blocks, or the store does not recognise a replay of it by its token (it deduplicates
        # block by block).
        table = pa.Table.from_batches([without_origins(b) for _, b in items],
                                      schema=schema.ARROW_SCHEMA).combine_chunks()
        path, token = self._retried("delivery_log", rows, lambda: self.log.write(table, reached))
        self._insert(table, token, rows)
        self._retried("delivery_log", rows, lambda: self.log.acknowledged(path, reached))
        return reached

    def _replay(self, path: Path) -> None:
        table, token, reached = self.log.read(path)
        log.warning("delivery: inserting again block %s (%d rows) that the previous run did not see "
                    "acknowledged; the store drops what it already has", path.name, table.num_rows)
        PENDING.inc(table.num_rows)
        self._insert(table, token, table.num_rows)
        self._retried("delivery_log", table.num_rows, lambda: self.log.acknowledged(path, reached))
        self.marks.advance(reached)
        REPLAYED_BLOCKS.inc()

    def _insert(self, table: pa.Table, token: str, rows: int) -> None:
        """Insert one block; retry with backoff until it succeeds."""
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": token}
        started = time.perf_counter()

        def attempt() -> None:
            nonlocal started
            started = time.perf_counter()
            self.client.insert_arrow(self.table, table, settings=settings)

        self._retried(None, rows, attempt)
        INSERT_SECONDS.observe(time.perf_counter() - started)
        INSERT_HEALTH.succeeded()
        ROWS.inc(rows)
        BATCHES.inc()
        PENDING.dec(rows)


    def _retried(self, reason: str | None, rows: int, action):
        """Run `action` until it succeeds, with backoff, counting each failure by `reason` (the
        error's kind when None): a full disk under the delivery log holds the rows like a store
        that refuses inserts, instead of ending the worker."""
        delay = BACKOFF_START
        while True:
            try:
                return action()
            except Exception as err:  # any failure: keep the rows, wait, try again
                INSERT_HEALTH.failed()
                kind = reason or _error_reason(err)
                ERRORS.labels(kind).inc()
                RETRIES.inc()
                _ratelimited(logging.WARNING, kind, "insert of %d rows failed (%s: %s); retrying in %.1fs, "
                             "rows kept", rows, kind, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                if kind == "closed":
                    self.client = reconnect(self.cfg)


class ClickHouseSink(FixedPartitionedSink[Item, list]):
    """(exporter, flow batch) items → ClickHouse `flows`, in large batches, exactly once.

    chDB is owned by one process, so with the embedded store only process 0 lists the single
    partition and Bytewax routes every batch there. A server takes `writers` parallel
    partitions from every process. Each partition keeps its delivery log in
    `directory/<partition>` (the outlet uses `<data_dir>/delivery`).
    """

    def __init__(self, cfg: ClickHouse, directory: Path, writers: int = 2) -> None:
        self.cfg = cfg
        self.directory = Path(directory)
        self.writers = writers

    def list_parts(self) -> list[str]:
        if self.cfg.embedded:
            return ["chdb"] if process_id() == 0 else []
        return [f"clickhouse-{i}" for i in range(self.writers)]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ClickHousePartition:
        # The store was migrated when the outlet started (flows/outlet.py), before any of this.
        return _ClickHousePartition(self.cfg, self.directory / for_part, _resumed(resume_state))


def _resumed(state: Any) -> list:
    """The snapshot's items; a snapshot of the version before origins (Arrow IPC bytes of
    plain flow batches) is taken as rows of no known origin."""
    if not isinstance(state, bytes):
        return state or []
    return [("", with_origins(batch, np.zeros(batch.num_rows, np.int64)))
            for batch in pa.ipc.open_stream(state)]
