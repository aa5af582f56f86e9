"""The flows API's rate arithmetic and the limits of API queries, on a real chDB store through
the WSGI application (werkzeug's test client): a steady source must read as its real rate
whatever `now` is, internal queries are never cut by the user-SQL row cap, user SQL is bounded
in rows, bytes and memory, and an unexpected failure is a counted JSON 500."""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pytest
from prometheus_client import REGISTRY
from werkzeug.test import Client

from connectors import clickhouse, http
from flows import schema
from flows.settings import Settings

STEADY_PPS = 100
HISTORY = 1500  # seconds of steady traffic before the test runs


def _batch(times: list[int], src_as: list[int], packets: int) -> pa.RecordBatch:
    n = len(times)
    return schema.make_batch({
        "TimeReceived": times, "ExporterAddress": [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 9])] * n,
        "ExporterName": ["steady"] * n, "SrcAS": src_as, "InIfName": ["et-0/0/9"] * n,
        "Bytes": [packets * 100] * n, "Packets": [packets] * n, "SamplingRate": [1] * n,
    }, n)


_filled_until: dict[str, int] = {}


def _steady_until(settings: Settings, start: int | None = None) -> None:
    """Steady traffic from `start` (or where it stopped) up to now: the tests run seconds to
    minutes after the fixture on a loaded machine, and that gap must not read as silence."""
    # Wait out the first seconds of a minute, so that "now" is never on a 1- or 5-minute boundary.
    while time.time() % 60 < 5:
        time.sleep(0.5)
    database = settings.clickhouse.database
    begin = _filled_until.get(database, start)
    now = int(time.time())
    if now > begin:
        seconds = list(range(begin, now))
        clickhouse.connect(settings.clickhouse).insert_arrow(
            f"{database}.flows", pa.Table.from_batches([_batch(seconds, [64500] * len(seconds), STEADY_PPS)]))
    _filled_until[database] = now


@pytest.fixture(scope="module")
def store(chdb_dir):
    settings = Settings(clickhouse={"dsn": f"chdb:{chdb_dir}", "database": f"lim_{uuid.uuid4().hex[:8]}"},
                        api={"max_rows": 10})
    clickhouse.migrate(settings.clickhouse)
    client = clickhouse.connect(settings.clickhouse)
    _steady_until(settings, int(time.time()) - HISTORY)
    yield settings
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")


@pytest.fixture(scope="module")
def web(store) -> Client:
    return Client(http.API(store))


def flows(web: Client, **params) -> dict:
    answer = web.get("/api/v0/flows", query_string={"unit": "pps", "filter": "ExporterName = 'steady'", **params})
    assert answer.status_code == 200, answer.json
    return answer.json


@pytest.mark.parametrize("params", [
    {"from": "-15m", "points": "1"},  # the 5-minute table, now inside a bucket
    {"from": "-15m", "points": "4"},
    {"from": "-20m", "to": "-2m", "points": "1"},  # an end in the past, not on a boundary
    {"from": "-7m", "points": "7", "dimensions": "SrcAS"},  # the 1-minute table
    {"from": "-10m", "points": "600"},  # raw flows, 1 s buckets
])
def test_a_steady_rate_reads_as_itself(store, web, params) -> None:
    _steady_until(store)
    body = flows(web, **params)
    assert body["series"], body
    for series in body["series"]:
        # the last second may not be stored yet: at most a second short over the range
        assert series["average"] == pytest.approx(STEADY_PPS, rel=0.01), body
        full = series["values"][:-1] if len(series["values"]) > 1 else series["values"]
        assert all(v == pytest.approx(STEADY_PPS, rel=0.02) for v in full), series["values"]
    assert body["time"][0] == body["from"] and body["time"][-1] < time.time()


def test_blank_times_are_the_defaults(web) -> None:
    body = flows(web, **{"from": "  ", "to": " ", "points": "1"})
    assert body["to"] - body["from"] >= 3600 and body["series"][0]["average"] > 0


def test_internal_queries_are_not_cut_by_the_user_row_cap(web, store) -> None:
    """51 groups x 2000 one-second buckets = 102,000 result rows, with api.max_rows = 10."""
    start = int(time.time()) - 4000
    times = [start + s for s in range(2000) for _ in range(51)]
    ases = [65000 + g for _ in range(2000) for g in range(51)]
    clickhouse.connect(store.clickhouse).insert_arrow(
        f"{store.clickhouse.database}.flows", pa.Table.from_batches([_batch(times, ases, 1)]))
    body = flows(web, **{"from": str(start), "to": str(start + 2000), "points": "2000", "limit": "50",
                         "dimensions": "SrcAS", "filter": "SrcAS >= 65000"})
    assert len(body["series"]) == 51 and len(body["time"]) == 2000
    assert all(v == 1.0 for series in body["series"][:50] for v in series["values"])
    assert all(v == 1.0 for v in body["series"][50]["values"])  # Other: one AS


def test_user_sql_rows_are_capped_and_flagged(web) -> None:
    answer = web.post("/api/v0/query", data="SELECT number FROM numbers(1000)")
    assert answer.status_code == 200
    assert answer.json["rows"] == [[n] for n in range(10)] and answer.json["truncated"] is True
    answer = web.post("/api/v0/query", data="SELECT number FROM numbers(10)")
    assert answer.json["truncated"] is False and len(answer.json["rows"]) == 10


def test_user_sql_result_size_and_memory_are_bounded(store) -> None:
    api = store.api.model_copy(update={"max_rows": 1_000_000, "max_memory": 16 * 1024**2,
                                       "max_result": 1024**2})
    web = Client(http.API(store.model_copy(update={"api": api})))
    answer = web.post("/api/v0/query", data="SELECT number FROM numbers(1000000)")  # 8 MB
    assert (answer.status_code, answer.json["reason"]) == (400, "query_failed")
    assert "limit for result exceeded" in answer.json["error"].lower()
    # the stopped query leaves nothing behind for the next one on the same API
    assert web.post("/api/v0/query", data="SELECT 7 AS seven").json["rows"] == [[7]]
    answer = web.post("/api/v0/query", data="SELECT count() FROM (SELECT number % 3000000 AS k, count() "
                                            "FROM numbers(6000000) GROUP BY k)")
    assert (answer.status_code, answer.json["reason"]) == (400, "query_failed")
    assert "memory limit" in answer.json["error"].lower()


def test_an_unexpected_failure_is_a_counted_json_500(web, monkeypatch) -> None:
    def broken(name, settings):  # a fault that no request can cause: stands for a bug
        raise RuntimeError("bug")

    monkeypatch.setattr(http.server, "dictionary_csv", broken)
    before = REGISTRY.get_sample_value("waxflow_api_errors_total", {"reason": "internal"}) or 0
    answer = web.get("/api/v0/clickhouse/asns.csv")
    assert answer.status_code == 500 and answer.json["reason"] == "internal"
    assert REGISTRY.get_sample_value("waxflow_api_errors_total", {"reason": "internal"}) == before + 1


def test_healthz_probes_kafka_at_most_every_few_seconds(store) -> None:
    """A listener that is not Kafka: the probe connects (and fails); a second /healthz right after
    reuses the answer instead of connecting again, and the store part still answers."""
    import gc
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[int] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        kafka = store.kafka.model_copy(update={"brokers": [f"127.0.0.1:{port}"]})
        web = Client(http.API(store.model_copy(update={"kafka": kafka})))
        first = web.get("/healthz")
        assert first.status_code == 503 and first.json["components"]["kafka"]["ok"] is False
        assert first.json["components"]["store"]["ok"] is True
        gc.collect()  # the probe's admin client is gone: nothing reconnects on its own
        time.sleep(0.5)
        seen = len(accepted)
        assert seen >= 1
        second = web.get("/healthz")
        assert second.json["components"]["kafka"]["ok"] is False and len(accepted) == seen
    finally:
        server.close()
