"""ClickHouse store: the client (embedded chDB or a server over HTTP) and the migrations (the
outlet's sink is connectors/clickhouse_sink.py).

Migrations look at what exists (system.tables, system.columns) and change only what differs
from flows/ddl.py: missing tables and columns are added, TTLs altered, views whose definition
changed are recreated, lookup dictionaries refilled when their content changed. A second run
with nothing changed issues no DDL at all.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from connectors.cluster import process_id
from flows import ddl
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
        missing = [s for s in spec.settings if s not in existing.engine_full]
        if missing:
            self._apply(f"set {', '.join(missing)} on {spec.name}",
                        f"ALTER TABLE `{self.db}`.`{spec.name}` MODIFY SETTING {', '.join(missing)}")

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


def reconnect(cfg: ClickHouse) -> Client:
    """A new shared client, replacing one that was closed under us."""
    with _clients_lock:
        _clients.pop(cfg.dsn, None)
    return connect(cfg)
