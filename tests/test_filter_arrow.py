"""The filter language compiled to an Arrow expression selects exactly the flows its SQL selects
in the store: the same batch filtered both ways, over filters that use every kind of column
(numbers, text, enums, FixedString countries, addresses and subnets, lists, LIKE, NOT)."""

from __future__ import annotations

import random
import time

import pyarrow as pa
import pytest

from connectors import clickhouse
from flows import schema
from flows.filter import arrow_filter, parse_filter

FILTERS = [
    "SrcAS = 2906",
    "SrcAS != 2906 AND Proto = 17",
    "DstPort >= 1024 OR Proto = 1",
    "InIfBoundary = 'external'",
    "NOT OutIfBoundary = 'internal'",
    "SrcCountry = 'FR'",
    "SrcCountry IN ('FR', 'DE') AND NOT DstCountry = 'US'",
    "ExporterName LIKE 'edge1%'",
    "ExporterName ILIKE 'EDGE2%'",
    "InIfName = 'et-0/0/1'",
    "SrcAddr = '10.0.0.0/24'",
    "DstAddr != '192.0.2.7'",
    "SrcAddr IN ('10.0.0.0/25', '2001:db8::/64')",
    "DstAddr = '2001:db8::1'",
    "SrcPort NOT IN (53, 123, 443)",
    "(SrcAS = 2906 OR SrcAS = 15169) AND (Proto = 6 AND NOT DstPort < 100)",
    "SrcCountry LIKE 'F%'",
    "TCPFlags > 1 AND FlowDirection = 'ingress'",
]


def _flows(n: int = 3000):
    rng = random.Random(7)
    def address(i: int) -> bytes:
        if i % 3 == 0:
            return bytes.fromhex("20010db8000000000000000000000000")[:15] + bytes([i % 4])
        return bytes(10) + b"\xff\xff" + bytes([10 if i % 2 else 192, 0, rng.choice([0, 2]), rng.randrange(256)])
    columns = {
        "TimeReceived": [int(time.time()) - 2 * n + i for i in range(n)],  # (recent: older rows would expire)
        "SrcAS": [rng.choice([2906, 15169, 13335, 64500]) for _ in range(n)],
        "Proto": [rng.choice([1, 6, 17]) for _ in range(n)],
        "SrcPort": [rng.choice([53, 123, 443, 8080, 50000]) for _ in range(n)],
        "DstPort": [rng.choice([22, 80, 443, 5000]) for _ in range(n)],
        "InIfBoundary": [rng.randrange(3) for _ in range(n)],
        "OutIfBoundary": [rng.randrange(3) for _ in range(n)],
        "FlowDirection": [rng.randrange(3) for _ in range(n)],
        "TCPFlags": [rng.choice([0, 2, 18]) for _ in range(n)],
        "SrcCountry": [rng.choice([b"FR", b"DE", b"US", b"\0\0"]) for _ in range(n)],
        "DstCountry": [rng.choice([b"FR", b"US"]) for _ in range(n)],
        "ExporterName": [rng.choice(["edge1.par", "edge2.ams", "core1"]) for _ in range(n)],
        "InIfName": [rng.choice(["et-0/0/1", "et-0/0/2", ""]) for _ in range(n)],
        "SrcAddr": [address(i) for i in range(n)],
        "DstAddr": [address(i + 1) if i % 5 else bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7]) for i in range(n)],
    }
    return schema.make_batch(columns, n)


@pytest.fixture(scope="module")
def stored(chdb_dir):
    import uuid

    from flows.settings import ClickHouse

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"farrow_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    client = clickhouse.connect(cfg)
    batch = _flows()
    client.insert_arrow(f"{cfg.database}.flows", pa.Table.from_batches([batch]))
    yield client, cfg.database, batch
    client.command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


@pytest.mark.parametrize("text", FILTERS)
def test_arrow_filter_selects_what_the_sql_selects(stored, text) -> None:
    client, database, batch = stored
    parsed = parse_filter(text)
    in_store = client.query(f"SELECT TimeReceived FROM `{database}`.flows WHERE {parsed.sql} ORDER BY TimeReceived",
                            parameters=parsed.parameters).result_rows
    expected = [int(row[0].timestamp()) for row in in_store]
    selected = pa.Table.from_batches([batch]).filter(arrow_filter(text)).column("TimeReceived").to_pylist()
    assert 0 < len(expected) < batch.num_rows, text  # (each filter keeps some and drops some)
    assert selected == expected, text


def test_arrow_filter_refuses_what_the_sql_refuses() -> None:
    from flows.columns import QueryError

    for text in ("Nope = 1", "SrcAS = 'x'", "SrcAddr < '10.0.0.1'", "InIfBoundary = 'sideways'", "SrcAS ="):
        with pytest.raises(QueryError):
            arrow_filter(text)
    assert arrow_filter("  ") is None
