"""ClickHouse store: the client (embedded chDB or a server over HTTP), and running the migrations:
what exists is read from system.databases/tables/columns, flows/migrations.py plans what must
change, and the steps run here (a second run with nothing changed issues no DDL at all). The
outlet's sink is connectors/clickhouse_sink.py.
"""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from connectors.cluster import process_id
from flows import ddl, migrations
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


class Migrator:
    """Brings one database in line with flows/ddl.py: inspects it, runs the plan
    (flows/migrations.py); `run()` returns the steps it applied."""

    def __init__(self, client: Client, cfg: ClickHouse) -> None:
        self.client = client
        self.cfg = cfg
        self.db = cfg.database

    def inspect(self) -> migrations.Existing:
        databases = self.client.query("SELECT name FROM system.databases").result_rows
        tables = self.client.query(
            "SELECT name, engine_full, sorting_key, comment FROM system.tables WHERE database = {db:String}",
            parameters={"db": self.db}).result_rows
        columns: dict[str, dict[str, str]] = {}
        for table, name, kind in self.client.query(
                "SELECT table, name, type FROM system.columns WHERE database = {db:String} ORDER BY table, position",
                parameters={"db": self.db}).result_rows:
            columns.setdefault(table, {})[name] = kind
        return migrations.Existing(
            database=(self.db,) in databases,
            tables={name: migrations.ExistingTable(engine, key, comment, columns.get(name, {}))
                    for name, engine, key, comment in tables})

    def run(self) -> list[str]:
        existing = self.inspect()
        for table, column, found, wanted in migrations.kept_types(existing):
            if wanted:
                log.warning("%s.%s is %s, schema says %s; it is in the sorting key, so it is left alone",
                            table, column, found, wanted)
            else:
                log.info("%s.%s (%s) is no longer in the schema; kept", table, column, found)
        lookups = {spec.name: lookup_rows(spec.name, self.cfg) for spec in ddl.DICTIONARIES}
        steps = migrations.plan(existing, self.db, ttl_seconds(self.cfg), lookups, self._credentials())
        for step in steps:
            log.info("migration: %s", step.description)
            if step.load is not None:
                self.client.command(f"TRUNCATE TABLE {step.load.table}")
                self.client.insert(step.load.table, list(step.load.rows), column_names=list(step.load.columns))
            self.client.command(step.sql)
        return [step.description for step in steps]

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
