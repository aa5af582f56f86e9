"""ClickHouse store: the client (embedded chDB or a server over HTTP) and the migrations.

Migrations look at what exists (system.tables, system.columns) and change only what differs
from flows/ddl.py: missing tables and columns are added, TTLs altered, views whose definition
changed are recreated, lookup dictionaries refilled when their content changed. A second run
with nothing changed issues no DDL at all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

import clickhouse_connect
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from clickhouse_connect.driver.client import Client
from prometheus_client import Counter, Gauge, Histogram

from connectors.cluster import process_id
from connectors.metrics import RateLimitedLog
from flows import ddl, schema
from flows.settings import ClickHouse

log = logging.getLogger(__name__)

_clients: dict[str, Client] = {}
_clients_lock = threading.Lock()


def connect(cfg: ClickHouse) -> Client:
    """A client for the configured store, shared within the process.

    chDB allows one engine per process and data directory, so every caller in the process
    must use the same client; sharing it for servers too keeps one connection pool.
    """
    with _clients_lock:
        client = _clients.get(cfg.dsn)
        if client is None:
            if cfg.embedded:
                Path(urlparse(cfg.dsn).path).mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=cfg.dsn)
            _clients[cfg.dsn] = client
        return client


def ttl_seconds(cfg: ClickHouse) -> dict[str, int]:
    return {name: int(getattr(cfg.ttl, name).total_seconds()) for name in ddl.TABLES}


_TTL_RE = re.compile(r"\bTTL\s+TimeReceived\s*\+\s*toIntervalSecond\((\d+)\)")


def _existing_ttl(engine_full: str) -> int | None:
    match = _TTL_RE.search(engine_full)
    return int(match.group(1)) if match else None


@dataclass
class _Existing:
    engine_full: str
    sorting_key: str
    comment: str


class Migrator:
    """Brings one database in line with flows/ddl.py; `run()` returns the steps it applied."""

    def __init__(self, client: Client, cfg: ClickHouse) -> None:
        self.client = client
        self.cfg = cfg
        self.db = cfg.database
        self.steps: list[str] = []

    # -- inspection ----------------------------------------------------------------------------
    def _tables(self) -> dict[str, _Existing]:
        rows = self.client.query(
            "SELECT name, engine_full, sorting_key, comment FROM system.tables WHERE database = {db:String}",
            parameters={"db": self.db}).result_rows
        return {name: _Existing(engine, key, comment) for name, engine, key, comment in rows}

    def _columns(self, table: str) -> dict[str, str]:
        rows = self.client.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
            parameters={"db": self.db, "t": table}).result_rows
        return dict(rows)

    def _apply(self, description: str, sql: str) -> None:
        log.info("migration: %s", description)
        self.client.command(sql)
        self.steps.append(description)

    # -- steps ---------------------------------------------------------------------------------
    def run(self) -> list[str]:
        databases = self.client.query("SELECT name FROM system.databases").result_rows
        if (self.db,) not in databases:
            self._apply(f"create database {self.db}", f"CREATE DATABASE IF NOT EXISTS `{self.db}`")
        existing = self._tables()
        for spec in ddl.expected_tables(ttl_seconds(self.cfg)):
            self._table(spec, existing.get(spec.name))
        existing = self._tables()
        for view in ddl.expected_views():
            self._view(view, existing.get(view.name))
        for dictionary in ddl.DICTIONARIES:
            self._dictionary(dictionary, existing)
        return self.steps

    def _table(self, spec: ddl.TableSpec, existing: _Existing | None) -> None:
        if existing is None:
            self._apply(f"create table {spec.name}", spec.create_sql(self.db))
            return
        self._columns_of(spec, existing)
        if _existing_ttl(existing.engine_full) != spec.ttl_seconds:
            self._apply(f"set TTL of {spec.name} to {spec.ttl_seconds}s",
                        f"ALTER TABLE `{self.db}`.`{spec.name}` MODIFY {ddl.ttl_clause(spec.ttl_seconds)}")

    def _columns_of(self, spec: ddl.TableSpec, existing: _Existing) -> None:
        have = self._columns(spec.name)
        key = [k.strip() for k in existing.sorting_key.split(",") if k.strip()]
        alters, added_keys, previous = [], [], None
        for column in spec.columns:
            if column.name not in have:
                where = f" AFTER `{previous}`" if previous else " FIRST"
                alters.append(f"ADD COLUMN {column.ddl}{where}")
                if spec.extend_key_with_new_columns and not column.alias:
                    added_keys.append(column.name)
            elif have[column.name] != column.ch_type and column.name not in key:
                alters.append(f"MODIFY COLUMN {column.ddl}")
            elif have[column.name] != column.ch_type:
                log.warning("%s.%s is %s, schema says %s; it is in the sorting key, so it is left alone",
                            spec.name, column.name, have[column.name], column.ch_type)
            previous = column.name
        if added_keys:
            alters.append(f"MODIFY ORDER BY ({', '.join(key + added_keys)})")
        if alters:
            names = [a.split("`")[1] for a in alters if a.startswith(("ADD", "MODIFY COLUMN"))]
            self._apply(f"alter {spec.name}: {', '.join(names)}",
                        f"ALTER TABLE `{self.db}`.`{spec.name}` " + ", ".join(alters))
        extra = set(have) - {c.name for c in spec.columns}
        if extra:
            log.info("%s has columns the schema no longer lists (kept): %s", spec.name, sorted(extra))

    def _view(self, view: ddl.ViewSpec, existing: _Existing | None) -> None:
        if existing is not None and existing.comment == view.version:
            return
        if existing is not None:
            self._apply(f"drop outdated view {view.name}", f"DROP VIEW `{self.db}`.`{view.name}`")
        self._apply(f"create view {view.name}", view.create_sql(self.db))

    def _dictionary(self, spec: ddl.DictionarySpec, existing: dict[str, _Existing]) -> None:
        rows = lookup_rows(spec.name, self.cfg)
        digest = "waxflow:" + hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
        table = f"`{self.db}`.`{spec.table}`"
        if spec.table not in existing:
            self._apply(f"create table {spec.table}", spec.table_sql(self.db))
        changed = existing.get(spec.table, _Existing("", "", "")).comment != digest
        if changed:
            self.client.command(f"TRUNCATE TABLE {table}")
            self.client.insert(f"{self.db}.{spec.table}", rows, column_names=[n for n, _ in spec.columns])
            self._apply(f"load {len(rows)} rows into {spec.table}",
                        f"ALTER TABLE {table} MODIFY COMMENT '{digest}'")
        if spec.name not in existing:
            self._apply(f"create dictionary {spec.name}", spec.dictionary_sql(self.db, self._credentials()))
        elif changed:
            self._apply(f"reload dictionary {spec.name}", f"SYSTEM RELOAD DICTIONARY `{self.db}`.`{spec.name}`")

    def _credentials(self) -> str:
        """A server's dictionary source connects back to it with the DSN's user."""
        if self.cfg.embedded:
            return ""
        parsed = urlparse(self.cfg.dsn)
        out = f" USER '{unquote(parsed.username or 'default')}'"
        return out + (f" PASSWORD '{unquote(parsed.password)}'" if parsed.password else "")


def _read_csv(source: Iterable[str], types: tuple[type, ...]) -> list[list[Any]]:
    reader = csv.reader(source)
    next(reader, None)  # header
    return [[t(v) for t, v in zip(types, row)] for row in reader if row]


def lookup_rows(name: str, cfg: ClickHouse) -> list[list[Any]]:
    """Rows of a lookup dictionary: the shipped CSV, or the operator's AS names file."""
    types = {"protocols": (int, str, str), "asns": (int, str)}[name]
    if name == "asns" and cfg.asns_file is not None:
        with open(cfg.asns_file, newline="") as handle:
            return _read_csv(handle, types)
    text = resources.files("flows").joinpath(f"data/{name}.csv").read_text()
    return _read_csv(text.splitlines(), types)


def migrate(cfg: ClickHouse, client: Client | None = None) -> list[str]:
    """Apply the migrations to the configured store; returns the steps applied (empty: up to date)."""
    return Migrator(client or connect(cfg), cfg).run()


# --- the outlet's sink -------------------------------------------------------------------------


ROWS = Counter("waxflow_clickhouse_rows_total", "flow rows inserted into ClickHouse")
BATCHES = Counter("waxflow_clickhouse_batches_total", "insert batches committed to ClickHouse")
INSERT_SECONDS = Histogram("waxflow_clickhouse_insert_seconds", "time to insert one batch",
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES = Counter("waxflow_clickhouse_retries_total", "insert attempts that failed and were retried")
ERRORS = Counter("waxflow_clickhouse_errors_total", "failed inserts by reason (readonly, closed, "
                 "connection, storage, other)", ["reason"])
PENDING = Gauge("waxflow_clickhouse_pending_rows", "rows buffered, waiting for the next insert")
FAILING_SINCE = Gauge("waxflow_clickhouse_failing_since_seconds",
                      "unix time of the first failed insert since the last one that succeeded (0: none failing)")


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
# after the other: they are most of an insert's work (measured in bench/outlet.py).
INSERT_SETTINGS = {"parallel_view_processing": 1}
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
_ratelimited = RateLimitedLog(log)


# The store's disk refuses writes: permissions, a read-only or full filesystem.
_STORAGE_ERRORS = ("filesystem error", "permission denied", "operation not permitted",
                   "read-only file system", "no space left", "not enough space")


def migrate_or_exit(settings: Any) -> None:
    """The outlet's start: apply the migrations before consuming (with the embedded store, in
    process 0, the one that owns it); a store that cannot be migrated ends the process (exit 2)
    naming clickhouse.dsn."""
    import sys

    cfg = settings.clickhouse
    if cfg.embedded and process_id() != 0:
        return
    try:
        migrate(cfg)
    except Exception as err:  # the store's own message says why
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"configuration error\n  clickhouse.dsn: cannot migrate the store: {text[:500]}", file=sys.stderr)
        sys.exit(2)


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


def _to_ipc(batches: list[pa.RecordBatch]) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema.ARROW_SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def _from_ipc(data: bytes) -> list[pa.RecordBatch]:
    return list(pa.ipc.open_stream(data))


class _ClickHousePartition(StatefulSinkPartition[pa.RecordBatch | None, bytes | None]):
    """Buffers flow batches and inserts them in large batches, holding them while inserts fail.

    Items are flow batches, or None: a tick the decode step sends so that a quiet stream is
    still flushed after `batch_wait`. A due batch is inserted by a background thread while the
    worker goes on decoding (chDB and the HTTP client release the GIL while they work); at most
    one insert is in flight, so a slow or refusing store stops the worker at the next flush
    (back-pressure) instead of piling up rows. The snapshot holds the rows not yet inserted,
    the in-flight ones included, so a crash after a recovery snapshot loses none of them.
    """

    def __init__(self, cfg: ClickHouse, resume: bytes | None) -> None:
        self.cfg = cfg
        self.client = connect(cfg)
        self.table = f"{cfg.database}.flows"
        self.pending: list[pa.RecordBatch] = _from_ipc(resume) if resume else []
        self.rows = sum(b.num_rows for b in self.pending)
        self.first_at = time.monotonic() if self.pending else None
        self.in_flight: list[pa.RecordBatch] = []
        self.inserting: Future | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse-insert")
        PENDING.inc(self.rows)

    def write_batch(self, values: list[pa.RecordBatch | None]) -> None:
        for batch in values:
            if batch is not None and batch.num_rows:
                if self.first_at is None:
                    self.first_at = time.monotonic()
                self.pending.append(batch)
                self.rows += batch.num_rows
                PENDING.inc(batch.num_rows)
        if self.inserting is not None and self.inserting.done():
            self.wait_inserted()  # frees the rows and surfaces a failure promptly
        if self._due():
            self.flush()

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
        self.inserting = self.executor.submit(self._insert, self.in_flight, rows)

    def wait_inserted(self) -> None:
        """Block until the insert in flight (with its retries) has succeeded."""
        if self.inserting is not None:
            self.inserting.result()
            self.inserting, self.in_flight = None, []

    def _insert(self, batches: list[pa.RecordBatch], rows: int) -> None:
        """Insert one batch; retry with backoff until it succeeds (runs in the insert thread)."""
        table = pa.Table.from_batches(batches, schema=schema.ARROW_SCHEMA)
        delay = BACKOFF_START
        while True:
            started = time.perf_counter()
            try:
                self.client.insert_arrow(self.table, table, settings=INSERT_SETTINGS)
                break
            except Exception as err:  # any failure: keep the rows, wait, try again
                INSERT_HEALTH.failed()
                reason = _error_reason(err)
                ERRORS.labels(reason).inc()
                RETRIES.inc()
                _ratelimited(logging.WARNING, reason,
                             "insert of %d rows failed (%s: %s); retrying in %.1fs, rows kept",
                             rows, reason, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                if reason == "closed":
                    self.client = reconnect(self.cfg)
        INSERT_SECONDS.observe(time.perf_counter() - started)
        INSERT_HEALTH.succeeded()
        ROWS.inc(rows)
        BATCHES.inc()
        PENDING.dec(rows)

    def snapshot(self) -> bytes | None:
        if self.inserting is not None and self.inserting.done():
            self.wait_inserted()  # inserted rows need not be replayed
        batches = self.in_flight + self.pending
        return _to_ipc(batches) if batches else None

    def close(self) -> None:
        self.flush()
        self.wait_inserted()
        self.executor.shutdown()


class ClickHouseSink(FixedPartitionedSink[pa.RecordBatch | None, bytes | None]):
    """Flow batches keyed by exporter → ClickHouse `flows`, in large batches.

    chDB is owned by one process, so with the embedded store only process 0 lists the single
    partition and Bytewax routes every batch there. A server takes `writers` parallel
    partitions from every process.
    """

    def __init__(self, cfg: ClickHouse, writers: int = 2) -> None:
        self.cfg = cfg
        self.writers = writers

    def list_parts(self) -> list[str]:
        if self.cfg.embedded:
            return ["chdb"] if process_id() == 0 else []
        return [f"clickhouse-{i}" for i in range(self.writers)]

    def build_part(self, step_id: str, for_part: str, resume_state: bytes | None) -> _ClickHousePartition:
        migrate(self.cfg)
        return _ClickHousePartition(self.cfg, resume_state)


def reconnect(cfg: ClickHouse) -> Client:
    """A new shared client, replacing one that was closed under us."""
    with _clients_lock:
        _clients.pop(cfg.dsn, None)
    return connect(cfg)
