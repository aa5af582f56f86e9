"""What the ClickHouse database should contain, derived from flows/schema.py and the TTLs.

Pure descriptions and SQL text; connectors/clickhouse.py compares them with what exists and
applies the difference. Aggregated tables are SummingMergeTree fed by materialized views: every
kept dimension is part of their ORDER BY, so rows that agree on all dimensions are summed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from flows import schema

# (table suffix, seconds, partition expression). Names follow Akvorado's (flows_1m0s, ...).
RESOLUTIONS: tuple[tuple[str, int, str], ...] = (
    ("1m0s", 60, "toYYYYMMDD(TimeReceived)"),
    ("5m0s", 300, "toYYYYMMDD(TimeReceived)"),
    ("1h0m0s", 3600, "toYYYYMM(TimeReceived)"),
)
AGGREGATE_TABLES = tuple(f"flows_{suffix}" for suffix, _, _ in RESOLUTIONS)
TABLES = ("flows", *AGGREGATE_TABLES, "exporters")
# Leading sorting columns: queries filter on time, then exporter and interfaces.
KEY_PREFIX = ("TimeReceived", "ExporterAddress", "InIfName", "OutIfName")
DEDUPLICATION_WINDOW = 10_000
"""Parts whose deduplication token a table remembers. The sink inserts a block again after a crash
with its token (connectors/clickhouse_sink.py): with the embedded store before anything else;
with a server, every writer's parts count, so a process must be back before the cluster has
written this many parts per table (at 20 inserts/s, over 8 minutes)."""
DEDUPLICATION_SETTING = f"non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    ddl: str
    ch_type: str
    alias: bool = False


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    engine: str
    order_by: tuple[str, ...]
    partition_by: str
    ttl_seconds: int | None
    """None: rows are kept until deleted (saved filters)."""
    primary_key: tuple[str, ...] = ()
    extend_key_with_new_columns: bool = False
    """Aggregated tables: a new dimension must join the sorting key or it would not be summed by."""
    settings: tuple[str, ...] = ()
    """`name = value` table settings the migrations keep in place."""

    def create_sql(self, database: str) -> str:
        cols = ",\n    ".join(c.ddl for c in self.columns)
        pk = f"\nPRIMARY KEY ({', '.join(self.primary_key)})" if self.primary_key else ""
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}` (\n    {cols}\n)\n"
            f"ENGINE = {self.engine}\nPARTITION BY {self.partition_by}{pk}\n"
            f"ORDER BY ({', '.join(self.order_by)})"
            + ("" if self.ttl_seconds is None else f"\n{ttl_clause(self.ttl_seconds)}")
            + (f"\nSETTINGS {', '.join(self.settings)}" if self.settings else "")
        )


@dataclass(frozen=True)
class ViewSpec:
    name: str
    target: str
    select: str
    version: str = field(init=False)

    def __post_init__(self) -> None:
        # The comment carries a digest of the definition: a changed schema means a new view.
        object.__setattr__(self, "version", "waxflow:" + hashlib.sha256(self.select.encode()).hexdigest()[:16])

    def create_sql(self, database: str) -> str:
        select = self.select.replace("{db}", f"`{database}`")
        return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{self.name}` "
                f"TO `{database}`.`{self.target}` AS {select} COMMENT '{self.version}'")


def ttl_clause(seconds: int) -> str:
    return f"TTL TimeReceived + toIntervalSecond({seconds})"


def _column_spec(column: schema.Column) -> ColumnSpec:
    return ColumnSpec(column.name, column.ddl(), column.ch_type, column.alias is not None)


def flows_table(ttl_seconds: int) -> TableSpec:
    return TableSpec(
        name="flows",
        columns=tuple(_column_spec(c) for c in schema.COLUMNS),
        engine="MergeTree",
        order_by=("toStartOfFiveMinutes(TimeReceived)", *KEY_PREFIX[1:]),
        partition_by="toYYYYMMDD(TimeReceived)",
        ttl_seconds=ttl_seconds,
        settings=(DEDUPLICATION_SETTING,),
    )


def aggregate_dimensions() -> tuple[str, ...]:
    """Sorting key of the aggregated tables: the prefix, then every other kept dimension."""
    rest = [c.name for c in schema.AGGREGATED if c.stored and not c.summed and c.name not in KEY_PREFIX]
    return (*KEY_PREFIX, *rest)


def aggregate_table(name: str, partition_by: str, ttl_seconds: int) -> TableSpec:
    summed = ", ".join(c.name for c in schema.AGGREGATED if c.summed)
    return TableSpec(
        name=name,
        columns=tuple(_column_spec(c) for c in schema.AGGREGATED),
        engine=f"SummingMergeTree(({summed}))",
        order_by=aggregate_dimensions(),
        partition_by=partition_by,
        ttl_seconds=ttl_seconds,
        primary_key=KEY_PREFIX,
        extend_key_with_new_columns=True,
        settings=(DEDUPLICATION_SETTING,),
    )


def aggregate_view(name: str, seconds: int) -> ViewSpec:
    dims = [d for d in aggregate_dimensions() if d != "TimeReceived"]
    sums = [f"sum({c.name}) AS {c.name}" for c in schema.AGGREGATED if c.summed]
    select = (
        f"SELECT toStartOfInterval(TimeReceived, toIntervalSecond({seconds})) AS TimeReceived, "
        + ", ".join(dims) + ", " + ", ".join(sums)
        + " FROM {db}.`flows` GROUP BY TimeReceived, " + ", ".join(dims)
    )
    return ViewSpec(f"{name}_consumer", name, select)


def _exporter_columns() -> list[schema.Column]:
    return [c for c in schema.STORED if c.name.startswith("Exporter")]


def exporters_table(ttl_seconds: int) -> TableSpec:
    interface = [
        ColumnSpec(suffix, f"`{suffix}` {schema.BY_NAME['In' + suffix].ch_type}",
                   schema.BY_NAME["In" + suffix].ch_type)
        for suffix in schema.interface_attributes()
    ]
    return TableSpec(
        name="exporters",
        columns=(_column_spec(schema.BY_NAME["TimeReceived"]),
                 *(_column_spec(c) for c in _exporter_columns()), *interface),
        engine="ReplacingMergeTree(TimeReceived)",
        order_by=("ExporterAddress", "IfIndex"),
        partition_by="tuple()",
        ttl_seconds=ttl_seconds,
    )


SAVED_FILTERS = "saved_filters"


def saved_filters_table() -> TableSpec:
    """Filters people saved from the console, by name. The newest row of a name wins; a deleted
    name is a row with Deleted = 1 (ReplacingMergeTree's is_deleted), so a write never rewrites
    anything but this table."""
    return TableSpec(
        name=SAVED_FILTERS,
        columns=(ColumnSpec("Name", "`Name` String", "String"),
                 ColumnSpec("Filter", "`Filter` String", "String"),
                 ColumnSpec("Description", "`Description` String", "String"),
                 ColumnSpec("Updated", "`Updated` DateTime64(3)", "DateTime64(3)"),
                 ColumnSpec("Deleted", "`Deleted` UInt8", "UInt8")),
        engine="ReplacingMergeTree(Updated, Deleted)",
        order_by=("Name",),
        partition_by="tuple()",
        ttl_seconds=None,
    )


ALERTS = "alerts"


def alerts_table() -> TableSpec:
    """Alert events: one row per alert, its start row replaced by the end's (the newest
    `Updated` wins), so the table reads as alerts with their start, end (0 while on) and peak."""
    def spec(name: str, ch_type: str) -> ColumnSpec:
        return ColumnSpec(name, f"`{name}` {ch_type}", ch_type)
    return TableSpec(
        name=ALERTS,
        columns=(spec("Rule", "String"), spec("Key", "String"), spec("Start", "DateTime"), spec("End", "DateTime"),
                 spec("Measure", "String"), spec("Value", "Float64"), spec("Peak", "Float64"),
                 spec("TopSources", "Array(String)"), spec("TopSourcePorts", "Array(UInt16)"),
                 spec("TopProtocols", "Array(UInt8)"), spec("Action", "String"), spec("Updated", "DateTime64(3)")),
        engine="ReplacingMergeTree(Updated)",
        order_by=("Rule", "Key", "Start"),
        partition_by="toYYYYMM(Start)",
        ttl_seconds=None,
    )


def exporters_view() -> ViewSpec:
    exporter = [c.name for c in _exporter_columns()]
    suffixes = schema.interface_attributes()
    pairs = ", ".join(
        "(" + ", ".join(f"{side}{s}" for s in suffixes) + ")" for side in ("In", "Out"))
    picked = [f"tupleElement(If, {i + 1}) AS {s}" for i, s in enumerate(suffixes)]
    select = (
        "SELECT max(TimeReceived) AS TimeReceived, " + ", ".join(exporter) + ", " + ", ".join(picked)
        + " FROM {db}.`flows` ARRAY JOIN [" + pairs + "] AS If"
        + " GROUP BY " + ", ".join(exporter) + ", " + ", ".join(suffixes)
    )
    return ViewSpec("exporters_consumer", "exporters", select)


@dataclass(frozen=True)
class DictionarySpec:
    """A lookup dictionary backed by a small table whose content waxflow manages."""

    name: str
    key: str
    columns: tuple[tuple[str, str], ...]  # (name, type), the key first

    @property
    def table(self) -> str:
        return f"{self.name}_data"

    def table_sql(self, database: str) -> str:
        cols = ", ".join(f"`{n}` {t}" for n, t in self.columns)
        return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.table}` ({cols}) "
                f"ENGINE = MergeTree ORDER BY `{self.key}`")

    def dictionary_sql(self, database: str, credentials: str = "") -> str:
        cols = ", ".join(f"`{n}` {t}" for n, t in self.columns)
        return (f"CREATE DICTIONARY IF NOT EXISTS `{database}`.`{self.name}` ({cols}) "
                f"PRIMARY KEY `{self.key}` "
                f"SOURCE(CLICKHOUSE(DB '{database}' TABLE '{self.table}'{credentials})) "
                f"LIFETIME(MIN 0 MAX 3600) LAYOUT(HASHED())")


DICTIONARIES = (
    DictionarySpec("protocols", "proto", (("proto", "UInt64"), ("name", "String"), ("description", "String"))),
    DictionarySpec("asns", "asn", (("asn", "UInt64"), ("name", "String"))),
)


def expected_tables(ttls: dict[str, int]) -> list[TableSpec]:
    """Every table, from the TTL (seconds) of each."""
    tables = [flows_table(ttls["flows"])]
    tables += [aggregate_table(f"flows_{sfx}", part, ttls[f"flows_{sfx}"]) for sfx, _, part in RESOLUTIONS]
    tables.append(exporters_table(ttls["exporters"]))
    tables.append(saved_filters_table())
    tables.append(alerts_table())
    return tables


def expected_views() -> list[ViewSpec]:
    views = [aggregate_view(f"flows_{sfx}", seconds) for sfx, seconds, _ in RESOLUTIONS]
    views.append(exporters_view())
    return views
