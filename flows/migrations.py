"""The migration plan: what must change for a database to match flows/ddl.py, as a pure function
of what exists (`plan(existing, ...) -> steps`). connectors/clickhouse.py inspects the store,
asks for the plan and runs its steps; a store already up to date gets an empty plan.

Missing tables and columns are added (a new dimension of an aggregated table joins its sorting
key), a changed type is modified unless the column is in the sorting key, TTLs and table
settings are set, views whose definition changed are recreated, and lookup tables reloaded when
their content changed (a digest of it is kept as the table's comment).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows import ddl


@dataclass(frozen=True)
class ExistingTable:
    engine_full: str = ""
    sorting_key: str = ""
    comment: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)  # name → type


@dataclass(frozen=True)
class Existing:
    """What the store holds: whether the database exists, and its tables, views and dictionaries."""

    database: bool
    tables: Mapping[str, ExistingTable] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    """Rows replacing a lookup table's content (TRUNCATE, then INSERT), before the step's SQL."""

    table: str
    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Step:
    description: str
    sql: str
    load: Load | None = None


_TTL_RE = re.compile(r"\bTTL\s+TimeReceived\s*\+\s*toIntervalSecond\((\d+)\)")


def existing_ttl(engine_full: str) -> int | None:
    """The TTL (seconds) of a table, from its engine_full; None when it has none."""
    match = _TTL_RE.search(engine_full)
    return int(match.group(1)) if match else None


def lookup_digest(rows: Sequence[Sequence[Any]]) -> str:
    return "waxflow:" + hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def plan(existing: Existing, database: str, ttls: Mapping[str, int],
         lookups: Mapping[str, Sequence[Sequence[Any]]], credentials: str = "") -> list[Step]:
    """The steps, in order, that bring `database` in line with flows/ddl.py.

    `ttls`: seconds per table (ddl.TABLES); `lookups`: the rows of each lookup dictionary;
    `credentials`: the dictionary source's USER/PASSWORD clause (servers).
    """
    db = database
    steps: list[Step] = []
    if not existing.database:
        steps.append(Step(f"create database {db}", f"CREATE DATABASE IF NOT EXISTS `{db}`"))
    tables = existing.tables
    for spec in ddl.expected_tables(dict(ttls)):
        steps += _table(spec, tables.get(spec.name), db)
    for view in ddl.expected_views():
        steps += _view(view, tables.get(view.name), db)
    for dictionary in ddl.DICTIONARIES:
        steps += _dictionary(dictionary, tables, lookups[dictionary.name], db, credentials)
    return steps


def _table(spec: ddl.TableSpec, existing: ExistingTable | None, db: str) -> list[Step]:
    if existing is None:
        return [Step(f"create table {spec.name}", spec.create_sql(db))]
    steps = _columns(spec, existing, db)
    if spec.ttl_seconds is not None and existing_ttl(existing.engine_full) != spec.ttl_seconds:
        steps.append(Step(f"set TTL of {spec.name} to {spec.ttl_seconds}s",
                          f"ALTER TABLE `{db}`.`{spec.name}` MODIFY {ddl.ttl_clause(spec.ttl_seconds)}"))
    missing = [s for s in spec.settings if s not in existing.engine_full]
    if missing:
        steps.append(Step(f"set {', '.join(missing)} on {spec.name}",
                          f"ALTER TABLE `{db}`.`{spec.name}` MODIFY SETTING {', '.join(missing)}"))
    return steps


def _columns(spec: ddl.TableSpec, existing: ExistingTable, db: str) -> list[Step]:
    have = existing.columns
    key = [k.strip() for k in existing.sorting_key.split(",") if k.strip()]
    alters, names, added_keys, previous = [], [], [], None
    for column in spec.columns:
        if column.name not in have:
            where = f" AFTER `{previous}`" if previous else " FIRST"
            alters.append(f"ADD COLUMN {column.ddl}{where}")
            names.append(column.name)
            if spec.extend_key_with_new_columns and not column.alias:
                added_keys.append(column.name)
        elif have[column.name] != column.ch_type and column.name not in key:
            alters.append(f"MODIFY COLUMN {column.ddl}")
            names.append(column.name)
        # a changed type of a sorting-key column is left alone (kept_types() says which)
        previous = column.name
    if added_keys:
        alters.append(f"MODIFY ORDER BY ({', '.join(key + added_keys)})")
    if not alters:
        return []
    return [Step(f"alter {spec.name}: {', '.join(names)}",
                 f"ALTER TABLE `{db}`.`{spec.name}` " + ", ".join(alters))]


def kept_types(existing: Existing) -> list[tuple[str, str, str, str]]:
    """(table, column, type found, type the schema says) of sorting-key columns whose type the
    plan leaves as it is, and columns the schema no longer lists (type expected: "")."""
    out = []
    for spec in ddl.expected_tables({name: 0 for name in ddl.TABLES}):
        table = existing.tables.get(spec.name)
        if table is None:
            continue
        key = {k.strip() for k in table.sorting_key.split(",")}
        wanted = {c.name: c.ch_type for c in spec.columns}
        for name, found in table.columns.items():
            if name not in wanted:
                out.append((spec.name, name, found, ""))
            elif found != wanted[name] and name in key:
                out.append((spec.name, name, found, wanted[name]))
    return out


def _view(view: ddl.ViewSpec, existing: ExistingTable | None, db: str) -> list[Step]:
    if existing is not None and existing.comment == view.version:
        return []
    steps = []
    if existing is not None:
        steps.append(Step(f"drop outdated view {view.name}", f"DROP VIEW `{db}`.`{view.name}`"))
    return steps + [Step(f"create view {view.name}", view.create_sql(db))]


def _dictionary(spec: ddl.DictionarySpec, tables: Mapping[str, ExistingTable],
                rows: Sequence[Sequence[Any]], db: str, credentials: str) -> list[Step]:
    digest = lookup_digest(rows)
    steps = []
    if spec.table not in tables:
        steps.append(Step(f"create table {spec.table}", spec.table_sql(db)))
    changed = tables.get(spec.table, ExistingTable()).comment != digest
    if changed:
        load = Load(f"{db}.{spec.table}", tuple(n for n, _ in spec.columns), rows)
        steps.append(Step(f"load {len(rows)} rows into {spec.table}",
                          f"ALTER TABLE `{db}`.`{spec.table}` MODIFY COMMENT '{digest}'", load))
    if spec.name not in tables:
        steps.append(Step(f"create dictionary {spec.name}", spec.dictionary_sql(db, credentials)))
    elif changed:
        steps.append(Step(f"reload dictionary {spec.name}", f"SYSTEM RELOAD DICTIONARY `{db}`.`{spec.name}`"))
    return steps
