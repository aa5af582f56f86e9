"""Migrations against a real chDB store: create, no-op rerun, TTL change, new columns, sums."""

from __future__ import annotations

import ipaddress
import time

import pytest

from connectors import clickhouse
from flows import ddl, migrations, schema
from flows.settings import ClickHouse


def table_ttls(client, database: str) -> dict[str, int | None]:
    rows = client.query("SELECT name, engine_full FROM system.tables WHERE database = {d:String}",
                        parameters={"d": database}).result_rows
    return {name: migrations.existing_ttl(engine) for name, engine in rows}


def test_creates_tables_views_and_dictionaries_with_ttls(store: ClickHouse) -> None:
    steps = clickhouse.migrate(store)
    assert steps, "a fresh database needs migrations"
    client = clickhouse.connect(store)
    ttls = table_ttls(client, store.database)
    expected = clickhouse.ttl_seconds(store)
    for table in ddl.TABLES:
        assert ttls[table] == expected[table], table
    names = set(ttls)
    assert {"flows_1m0s_consumer", "flows_5m0s_consumer", "flows_1h0m0s_consumer",
            "exporters_consumer", "protocols", "asns"} <= names
    # Every stored schema column exists in flows with the schema's type.
    columns = dict(client.query(
        "SELECT name, type FROM system.columns WHERE database = {d:String} AND table = 'flows'",
        parameters={"d": store.database}).result_rows)
    for column in schema.COLUMNS:
        assert columns[column.name] == column.ch_type


def test_second_run_changes_nothing(store: ClickHouse) -> None:
    clickhouse.migrate(store)
    assert clickhouse.migrate(store) == []


def test_ttl_change_is_applied_on_next_run(store: ClickHouse) -> None:
    clickhouse.migrate(store)
    changed = store.model_copy(update={"ttl": store.ttl.model_copy(update={
        "flows": store.ttl.flows / 5, "flows_5m0s": store.ttl.flows_5m0s * 2})})
    steps = clickhouse.migrate(changed)
    assert sorted(steps) == sorted([
        f"set TTL of flows to {int(changed.ttl.flows.total_seconds())}s",
        f"set TTL of flows_5m0s to {int(changed.ttl.flows_5m0s.total_seconds())}s"])
    ttls = table_ttls(clickhouse.connect(store), store.database)
    assert ttls["flows"] == int(changed.ttl.flows.total_seconds())
    assert clickhouse.migrate(changed) == []


def test_missing_columns_are_added_and_join_the_aggregate_key(store: ClickHouse) -> None:
    """An older database (here: without DstAS and TCPFlags) is brought up to the schema."""
    clickhouse.migrate(store)
    client = clickhouse.connect(store)
    db = store.database
    # Rebuild flows_1m0s as an older version would have made it: DstAS absent from columns and key.
    client.command(f"DROP VIEW `{db}`.flows_1m0s_consumer")
    client.command(f"DROP TABLE `{db}`.flows_1m0s")
    old = ddl.aggregate_table("flows_1m0s", "toYYYYMMDD(TimeReceived)", 3600)
    old = ddl.TableSpec(**{**old.__dict__, "columns": tuple(c for c in old.columns if c.name != "DstAS"),
                           "order_by": tuple(k for k in old.order_by if k != "DstAS")})
    client.command(old.create_sql(db))
    client.command(f"ALTER TABLE `{db}`.flows DROP COLUMN TCPFlags")

    steps = clickhouse.migrate(store)
    assert "alter flows: TCPFlags" in steps
    assert "alter flows_1m0s: DstAS" in steps
    key = client.query("SELECT sorting_key FROM system.tables WHERE database = {d:String} "
                       "AND name = 'flows_1m0s'", parameters={"d": db}).result_rows[0][0]
    assert key.split(", ")[-1] == "DstAS"
    assert clickhouse.migrate(store) == []


def _flows(now: int) -> schema.pa.RecordBatch:
    exporter = ipaddress.IPv6Address("::ffff:192.0.2.1").packed
    rows = [  # (second offset, in ifindex, in name, src AS, proto, bytes, packets)
        (0, 1, "et-0/0/1", 15169, 6, 1000, 10),
        (1, 1, "et-0/0/1", 15169, 6, 500, 5),
        (2, 2, "et-0/0/2", 13335, 17, 300, 3),
        (70, 1, "et-0/0/1", 15169, 6, 7, 1),
    ]
    return schema.make_batch({
        "TimeReceived": [now + r[0] for r in rows],
        "ExporterAddress": [exporter] * len(rows),
        "ExporterName": ["edge1"] * len(rows),
        "InIfIndex": [r[1] for r in rows],
        "InIfName": [r[2] for r in rows],
        "SrcAS": [r[3] for r in rows],
        "Proto": [r[4] for r in rows],
        "Bytes": [r[5] for r in rows],
        "Packets": [r[6] for r in rows],
        "SamplingRate": [1] * len(rows),
    }, len(rows))


def test_rows_are_summed_into_every_aggregate_table(store: ClickHouse) -> None:
    clickhouse.migrate(store)
    client = clickhouse.connect(store)
    db = store.database
    now = (int(time.time()) // 3600) * 3600 + 60  # leaves room for the +70 s row in the same hour
    client.insert_arrow(f"{db}.flows", _flows(now))
    query = ("SELECT SrcAS, InIfName, sum(Bytes), sum(Packets) FROM `{db}`.{t} "
             "GROUP BY SrcAS, InIfName ORDER BY SrcAS")
    expected = client.query(query.format(db=db, t="flows")).result_rows
    assert expected == [(13335, "et-0/0/2", 300, 3), (15169, "et-0/0/1", 1507, 16)]
    for table in ddl.AGGREGATE_TABLES:
        assert client.query(query.format(db=db, t=table)).result_rows == expected, table
    # The 1-minute table keeps two minutes for AS15169; coarser tables fold them together.
    client.command(f"OPTIMIZE TABLE `{db}`.flows_1m0s FINAL")
    client.command(f"OPTIMIZE TABLE `{db}`.flows_1h0m0s FINAL")
    assert client.query(f"SELECT count() FROM `{db}`.flows_1m0s WHERE SrcAS = 15169").result_rows == [(2,)]
    assert client.query(f"SELECT count() FROM `{db}`.flows_1h0m0s WHERE SrcAS = 15169").result_rows == [(1,)]


def test_exporters_and_dictionaries(store: ClickHouse) -> None:
    clickhouse.migrate(store)
    client = clickhouse.connect(store)
    db = store.database
    client.insert_arrow(f"{db}.flows", _flows(int(time.time())))
    interfaces = client.query(
        f"SELECT ExporterName, IfIndex, IfName FROM `{db}`.exporters FINAL "
        "WHERE IfIndex != 0 ORDER BY IfIndex").result_rows
    assert interfaces == [("edge1", 1, "et-0/0/1"), ("edge1", 2, "et-0/0/2")]
    names = client.query(
        f"SELECT dictGet('{db}.protocols', 'name', toUInt64(Proto)) AS p, "
        f"dictGet('{db}.asns', 'name', toUInt64(SrcAS)) AS a FROM `{db}`.flows "
        "GROUP BY p, a ORDER BY p").result_rows
    assert names == [("TCP", "Google"), ("UDP", "Cloudflare")]


def test_operator_asn_file_replaces_the_shipped_list(store: ClickHouse, tmp_path) -> None:
    clickhouse.migrate(store)
    path = tmp_path / "asns.csv"
    path.write_text("asn,name\n64500,Example Transit\n64501,Example Peer\n")
    custom = store.model_copy(update={"asns_file": path})
    steps = clickhouse.migrate(custom)
    assert steps == ["load 2 rows into asns_data", "reload dictionary asns"]
    client = clickhouse.connect(store)
    got = client.query(f"SELECT dictGet('{store.database}.asns', 'name', toUInt64(64501))").result_rows
    assert got == [("Example Peer",)]
    assert clickhouse.migrate(custom) == []


@pytest.mark.parametrize("table", ddl.TABLES)
def test_sorting_key_starts_with_time_and_exporter(store: ClickHouse, table: str) -> None:
    clickhouse.migrate(store)
    key = clickhouse.connect(store).query(
        "SELECT sorting_key FROM system.tables WHERE database = {d:String} AND name = {t:String}",
        parameters={"d": store.database, "t": table}).result_rows[0][0]
    first = key.split(", ")[0]
    assert first in ("toStartOfFiveMinutes(TimeReceived)", "TimeReceived", "ExporterAddress")


def test_the_plan_is_a_pure_function_of_what_exists() -> None:
    """flows/migrations.plan without a store: a fresh database, then one that lacks a column,
    a TTL and the deduplication window, then one that matches."""
    ttls = {name: 86_400 for name in ddl.TABLES}
    lookups = {"protocols": [[6, "TCP", ""]], "asns": [[64500, "Example"]]}
    fresh = migrations.plan(migrations.Existing(database=False), "w", ttls, lookups)
    assert fresh[0].description == "create database w"
    creates = {step.description for step in fresh}
    assert {"create table flows", "create view flows_1m0s_consumer", "create dictionary asns"} <= creates
    flows_sql = next(step.sql for step in fresh if step.description == "create table flows")
    assert ddl.DEDUPLICATION_SETTING in flows_sql
    spec = ddl.flows_table(86_400)
    columns = {c.name: c.ch_type for c in spec.columns if c.name != "DstVlan"}
    old = migrations.ExistingTable("MergeTree ORDER BY x TTL TimeReceived + toIntervalSecond(3600)",
                                   "TimeReceived", "", columns)
    steps = migrations.plan(migrations.Existing(True, {"flows": old}), "w", ttls, lookups)
    described = [step.description for step in steps]
    assert "alter flows: DstVlan" in described and "set TTL of flows to 86400s" in described
    assert f"set {ddl.DEDUPLICATION_SETTING} on flows" in described
    current = migrations.ExistingTable(
        f"MergeTree ORDER BY x {ddl.ttl_clause(86_400)} SETTINGS {ddl.DEDUPLICATION_SETTING}",
        "TimeReceived", "", {c.name: c.ch_type for c in spec.columns})
    steps = migrations.plan(migrations.Existing(True, {"flows": current}), "w", ttls, lookups)
    assert not [s for s in steps if s.description.endswith(" flows") or s.description.startswith("alter flows")]
