"""The console's endpoints on a real socket over a chDB store of known flows: /api/v0/graph
(series, sankey, reverse direction, previous period, every unit), /api/v0/widgets/*, and saved
filters — each figure compared with a plain SQL query over `flows`, every bad input a 4xx with a
reason, and the saved-filter write unable to touch anything but its own table."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from werkzeug.test import Client

from connectors import clickhouse, http
from connectors.http import saved_filters as writer_module
from connectors.http.errors import APIError
from connectors.http.saved_filters import SavedFilterWriter
from connectors.http.server import API as App
from flows import graph, schema
from flows.saved_filters import MAX_SAVED, SavedFilter
from flows.settings import API, Settings
from tests.conftest import free_port
from tests.test_api import get

NOW = int(time.time())
T0 = NOW - NOW % 300 - 1800  # a 5-minute boundary half an hour ago
DAY = 86400
# (SrcAS, DstAS, InIfName, OutIfName, InIfSpeed, OutIfSpeed, Bytes, Packets, SamplingRate, seconds after T0)
ROWS = [
    (2906, 64500, "et-0/0/1", "ae0", 10_000, 100_000, 1_000_000, 1000, 10, 5),
    (2906, 64500, "et-0/0/1", "ae0", 10_000, 100_000, 3_000_000, 2500, 10, 65),
    (15169, 64500, "et-0/0/2", "ae0", 1_000, 100_000, 2_000_000, 2000, 10, 130),
    (64500, 2906, "ae0", "et-0/0/1", 100_000, 10_000, 400_000, 800, 10, 70),  # the answers to 2906
    (64500, 15169, "ae0", "et-0/0/2", 100_000, 0, 100_000, 200, 10, 200),      # (egress speed unknown)
    (13335, 64500, "et-0/0/3", "ae0", 0, 100_000, 50_000, 50, 1, 250),
]
PREVIOUS = [(2906, 64500, "et-0/0/1", "ae0", 10_000, 100_000, 7_000_000, 5000, 10, 100 - DAY)]


def _batch(rows, start=T0):
    keys = ("SrcAS", "DstAS", "InIfName", "OutIfName", "InIfSpeed", "OutIfSpeed", "Bytes", "Packets", "SamplingRate")
    columns = {key: [r[i] for r in rows] for i, key in enumerate(keys)}
    columns["TimeReceived"] = [start + r[-1] for r in rows]
    columns["ExporterAddress"] = [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])] * len(rows)
    columns["ExporterName"] = ["edge1"] * len(rows)
    return schema.make_batch(columns, len(rows))


@pytest.fixture(scope="module")
def served(chdb_dir):
    import pyarrow as pa

    settings = Settings(clickhouse={"dsn": f"chdb:{chdb_dir}", "database": f"graph_{uuid.uuid4().hex[:8]}"},
                        kafka={"brokers": [f"127.0.0.1:{free_port()}"]},
                        api=API(listen=f"127.0.0.1:{free_port()}", token="s3cret"))
    clickhouse.migrate(settings.clickhouse)
    client = clickhouse.connect(settings.clickhouse)
    client.insert_arrow(f"{settings.clickhouse.database}.flows", pa.Table.from_batches([_batch(ROWS + PREVIOUS)]))
    assert http.serve_outlet(settings)
    yield settings
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")


def _sql(settings, expression: str, start: int, end: int, where: str = "1", group: str = "") -> dict:
    """{group value: sum(expression)} over raw flows in [start, end), by a plain query."""
    key = f"toString({group})" if group else "''"
    rows = clickhouse.connect(settings.clickhouse).query(
        f"SELECT {key}, sum({expression}) FROM `{settings.clickhouse.database}`.flows "
        f"WHERE TimeReceived >= toDateTime({start}) AND TimeReceived < toDateTime({end}) AND {where} GROUP BY 1"
    ).result_rows
    return {k: float(v) for k, v in rows}


BITS = "Bytes * SamplingRate * 8"
WINDOW = {"from": T0, "to": T0 + 600}


def test_graph_series_carry_the_table_figures_a_plain_sum_gives(served) -> None:
    status, body = get(served, "/api/v0/graph", {**WINDOW, "dimensions": "SrcAS", "points": 10})
    assert status == 200, body
    assert body["type"] == "series" and body["reverse"] is None and body["previous"] is None
    totals = _sql(served, BITS, T0, T0 + 600, group="SrcAS")
    got = {s["dimensions"][0]: s for s in body["series"]}
    assert {k: s["total"] for k, s in got.items()} == pytest.approx(totals)
    assert {k: s["average"] for k, s in got.items()} == pytest.approx({k: v / 600 for k, v in totals.items()})
    per_minute = [_sql(served, BITS, T0 + 60 * i, T0 + 60 * i + 60, "SrcAS = 2906").get("", 0.0) / 60 for i in range(10)]
    assert got["2906"]["values"] == pytest.approx(per_minute)
    assert got["2906"]["max"] == pytest.approx(max(per_minute))
    ordered = sorted(per_minute)  # 95th percentile, linear between closest ranks
    assert got["2906"]["p95"] == pytest.approx(ordered[8] + (ordered[9] - ordered[8]) * 0.55)
    assert body["names"].get("2906") and body["names"].get("15169")  # AS names for legends and tables


def test_bidirectional_swaps_the_dimensions_and_the_filter(served) -> None:
    status, body = get(served, "/api/v0/graph", {**WINDOW, "dimensions": "SrcAS,InIfName", "points": 1,
                                                 "filter": "SrcAS = 2906 AND InIfName = 'et-0/0/1'",
                                                 "bidirectional": "1"})
    assert status == 200, body
    reverse = body["reverse"]
    assert reverse["dimensions"] == ["DstAS", "OutIfName"]
    expected = _sql(served, BITS, T0, T0 + 600, "DstAS = 2906 AND OutIfName = 'et-0/0/1'")[""]
    assert [s["dimensions"] for s in reverse["series"]] == [["2906", "et-0/0/1"]]  # (its DstAS, OutIfName)
    assert reverse["series"][0]["total"] == pytest.approx(expected)


def test_the_reverse_of_an_interface_share_is_the_other_interface_s(served) -> None:
    status, body = get(served, "/api/v0/graph", {**WINDOW, "points": 1, "unit": "inl2pct",
                                                 "filter": "InIfName = 'et-0/0/1'", "bidirectional": 1})
    assert status == 200 and body["reverse"]["unit"] == "outl2pct"
    expected = _sql(served, "(Bytes + 18 * Packets) * SamplingRate * 8 / (OutIfSpeed * 10000)", T0, T0 + 600,
                    "OutIfName = 'et-0/0/1' AND OutIfSpeed > 0")[""]
    assert body["reverse"]["series"][0]["average"] == pytest.approx(expected / 600)


def test_a_previous_period_from_another_table_is_put_on_the_main_buckets(monkeypatch) -> None:
    from flows import api

    main = {"time": [1000, 1060, 1120], "step": 60, "to": 1180, "series": []}
    previous = {"time": [900 - 86400 + i * 30 for i in range(8)], "step": 30, "to": 1140 - 86400, "from": 0,
                "series": [{"dimensions": [], "values": [1, 1, 2, 2, 3, 3, 4, 4], "average": 0, "max": 4,
                            "p95": 0, "total": 0}]}
    query = graph.GraphQuery("series", api.parse_flows_query({}), None, None, 86400)
    moved = graph.shape_graph(query, main, None, previous)["previous"]
    assert moved["time"] == main["time"] and moved["step"] == 60
    # [1000, 1060) overlaps the previous [990, 1020) at 2 for 20 s, [1020, 1050) at 3, [1050, 1080) at 3 for 10 s
    assert moved["series"][0]["values"] == pytest.approx([(20 * 2 + 30 * 3 + 10 * 3) / 60,
                                                          (20 * 3 + 30 * 4 + 10 * 4) / 60, (20 * 4) / 60])


def test_previous_period_is_the_same_window_a_day_before_on_the_same_times(served) -> None:
    status, body = get(served, "/api/v0/graph", {**WINDOW, "points": 10, "previous": "day"})
    assert status == 200, body
    previous = body["previous"]
    assert previous["shift"] == DAY and previous["from"] == T0 - DAY and previous["time"] == body["time"]
    assert previous["series"][0]["total"] == pytest.approx(_sql(served, BITS, T0 - DAY, T0 + 600 - DAY)[""])


def test_sankey_links_consecutive_dimensions_and_adds_the_reverse_way(served) -> None:
    status, body = get(served, "/api/v0/graph", {**WINDOW, "dimensions": "SrcAS,DstAS", "type": "sankey",
                                                 "bidirectional": "true"})
    assert status == 200, body
    links = {(link["source"], link["target"]): link for link in body["sankey"]["links"]}
    forward = _sql(served, BITS, T0, T0 + 600, "SrcAS = 2906 AND DstAS = 64500")[""] / 600
    back = _sql(served, BITS, T0, T0 + 600, "DstAS = 2906 AND SrcAS = 64500")[""] / 600
    both = links[("SrcAS: 2906", "DstAS: 64500")]
    assert (both["forward"], both["reverse"], both["value"]) == pytest.approx((forward, back, forward + back))
    sources = {s for s, _ in links}
    assert not any(t in sources for _, t in links)  # two columns, left to right: no cycle
    names = {node["name"] for node in body["sankey"]["nodes"]}
    assert {name for pair in links for name in pair} <= names


@pytest.mark.parametrize("unit, expression, where", [
    ("flows", "1", "1"),
    ("inl2pct", "(Bytes + 18 * Packets) * SamplingRate * 8 / (InIfSpeed * 10000)", "InIfSpeed > 0"),
    ("outl2pct", "(Bytes + 18 * Packets) * SamplingRate * 8 / (OutIfSpeed * 10000)", "OutIfSpeed > 0"),
])
def test_flows_per_second_and_shares_of_interface_speed(served, unit, expression, where) -> None:
    status, body = get(served, "/api/v0/graph", {**WINDOW, "dimensions": "InIfName", "points": 1, "unit": unit})
    assert status == 200, body
    expected = _sql(served, expression, T0, T0 + 600, where, group="InIfName")
    got = {s["dimensions"][0]: s["average"] for s in body["series"]}
    assert {k: v for k, v in got.items() if v} == pytest.approx({k: v / 600 for k, v in expected.items() if v})
    if unit == "flows":
        assert body["table"] == "flows"  # counted where each row is one flow record
    else:  # one interface: the utilisation; 8.4 Mbit/s on 10 Gbit/s over 600 s
        assert 0 < got["et-0/0/1"] < 1


@pytest.mark.parametrize("params, reason", [
    ({"type": "pie"}, "bad_type"),
    ({"previous": "month"}, "bad_previous"),
    ({"bidirectional": "2"}, "bad_bidirectional"),
    ({"type": "sankey", "dimensions": "SrcAS"}, "bad_dimensions"),
    ({"type": "sankey", "dimensions": "SrcAS,DstAS", "points": "50"}, "bad_points"),
    ({"unit": "furlongs"}, "bad_unit"),
    ({"bidirectional": "1", "filter": "SrcAS = @"}, "bad_filter"),
    ({"from": "0", "to": "600", "previous": "day"}, "bad_range"),
    ({"colour": "red"}, "unknown_parameter"),
])
def test_graph_refuses_bad_input_with_a_reason(served, params, reason) -> None:
    status, body = get(served, "/api/v0/graph", params)
    assert status == 400 and body["reason"] == reason, body


def test_reverse_filter_swaps_columns_only() -> None:
    text = "SrcAS = 2906 AND InIfName = 'SrcAS' OR not DstAddr='10.0.0.0/8' AND ExporterName = \"InIf\""
    assert graph.reverse_filter(text) == ("DstAS = 2906 AND OutIfName = 'SrcAS' OR not SrcAddr='10.0.0.0/8' "
                                          "AND ExporterName = \"InIf\"")
    assert graph.reverse_name("InIfBoundary") == "OutIfBoundary" and graph.reverse_name("Proto") == "Proto"


# -- widgets ----------------------------------------------------------------------------------------

def test_widgets_answer_what_a_plain_query_gives(served) -> None:
    import pyarrow as pa

    recent = [(174, 64500, "et-0/0/9", "ae0", 0, 0, 10_000 * (i + 1), 10, 100, -30 - i) for i in range(5)]
    clickhouse.connect(served.clickhouse).insert_arrow(f"{served.clickhouse.database}.flows",
                                                       pa.Table.from_batches([_batch(recent, int(time.time()))]))
    status, rate = get(served, "/api/v0/widgets/flow-rate")
    assert status == 200, rate
    assert rate["to"] - rate["from"] == 300
    assert rate["bps"] == pytest.approx(_sql(served, BITS, rate["from"], rate["to"])[""] / 300)
    assert rate["flows_per_second"] == pytest.approx(5 / 300)
    status, top = get(served, "/api/v0/widgets/top/SrcAS", {"from": T0, "to": T0 + 600, "limit": 2})
    assert status == 200, top
    totals = _sql(served, BITS, T0, T0 + 600, group="SrcAS")
    assert [t["value"] for t in top["top"]] == sorted(totals, key=totals.get, reverse=True)[:2]
    assert top["top"][0]["percent"] == pytest.approx(100 * max(totals.values()) / sum(totals.values()))
    assert top["total"] == pytest.approx(sum(totals.values()) / 600) and top["top"][0]["name"]
    status, last = get(served, "/api/v0/widgets/last-flow")
    assert status == 200 and last["flow"]["SrcAS"] == 174 and last["flow"]["Bytes"] == 10_000
    status, hour = get(served, "/api/v0/widgets/graph")
    assert status == 200, hour
    assert hour["flows_per_second"]["table"] == "flows" and len(hour["bps"]["values"]) == len(hour["bps"]["time"])
    seconds = hour["flows_per_second"]["step"]
    assert sum(hour["flows_per_second"]["values"]) * seconds == pytest.approx(
        _sql(served, "1", hour["from"], hour["to"])[""], abs=1.0)  # (edges: a bucket's part)


@pytest.mark.parametrize("path, params, status, reason", [
    ("/api/v0/widgets/top/Nope", {}, 400, "unknown_dimension"),
    ("/api/v0/widgets/top/,", {}, 400, "bad_dimension"),
    ("/api/v0/widgets/top/%20", {}, 400, "bad_dimension"),
    ("/api/v0/widgets/top/SrcAS,DstAS", {}, 400, "bad_dimension"),
    ("/api/v0/widgets/top/SrcAS", {"limit": "500"}, 400, "bad_limit"),
    ("/api/v0/widgets/flow-rate", {"window": "0"}, 400, "bad_window"),
    ("/api/v0/widgets/flow-rate", {"window": "9" * 40}, 400, "bad_window"),
    ("/api/v0/widgets/last-flow", {"sql": "DROP TABLE flows"}, 400, "unknown_parameter"),
    ("/api/v0/widgets/graph", {"unit": "pps"}, 400, "unknown_parameter"),
])
def test_widgets_refuse_bad_input(served, path, params, status, reason) -> None:
    got, body = get(served, path, params)
    assert (got, body["reason"]) == (status, reason), body


# -- saved filters ------------------------------------------------------------------------------------

def _send(settings, method, path, body=None, token="s3cret", content_type="application/json"):
    import urllib.error
    import urllib.request

    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(http.api_base(settings) + path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _store_figures(settings) -> dict:
    client = clickhouse.connect(settings.clickhouse)
    return dict(client.query("SELECT name, total_rows FROM system.tables WHERE database = {d:String} "
                             "AND name != 'saved_filters' AND total_rows IS NOT NULL",
                             parameters={"d": settings.clickhouse.database}).result_rows)


def test_saved_filters_round_trip_and_touch_nothing_else(served) -> None:
    before = _store_figures(served)
    assert _send(served, "POST", "/api/v0/filters", {"name": "netflix in", "filter": "SrcAS = 2906",
                                                     "description": "from Netflix"}) == (201, {"saved": "netflix in"})
    assert _send(served, "POST", "/api/v0/filters", {"name": "netflix in", "filter": "SrcAS = 2906 AND Proto = 6"})[0] == 201
    status, one = get(served, "/api/v0/filters/netflix%20in")
    assert status == 200 and one["filter"] == "SrcAS = 2906 AND Proto = 6" and one["description"] == ""
    status, listed = get(served, "/api/v0/filters")
    assert [f["name"] for f in listed["filters"]] == ["netflix in"] and listed["writable"] is True
    assert _send(served, "DELETE", "/api/v0/filters/netflix%20in") == (200, {"deleted": "netflix in"})
    assert get(served, "/api/v0/filters/netflix%20in")[0] == 404
    assert _send(served, "DELETE", "/api/v0/filters/netflix%20in")[0] == 404
    assert _store_figures(served) == before


@pytest.mark.parametrize("body, content_type, status, reason", [
    ({"name": "x", "filter": "SrcAS = "}, "application/json", 400, "bad_filter"),
    ({"name": "x", "filter": "Nope = 1"}, "application/json", 400, "unknown_column"),
    ({"name": "", "filter": "SrcAS = 1"}, "application/json", 400, "bad_name"),
    ({"name": "a'; DROP TABLE flows; --", "filter": "SrcAS = 1"}, "application/json", 400, "bad_name"),
    ({"name": "x" * 65, "filter": "SrcAS = 1"}, "application/json", 400, "bad_name"),
    ({"name": "x", "filter": "SrcAS = 1", "description": "d" * 501}, "application/json", 400, "bad_description"),
    ({"name": "x", "filter": "SrcAS = 1", "sql": "DROP TABLE flows"}, "application/json", 400, "unknown_field"),
    (["name", "x"], "application/json", 400, "bad_request"),
    (b"{", "application/json", 400, "bad_json"),
    (b"[" * 50_000, "application/json", 400, "bad_json"),
    (b"name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b'{"name": "x", "filter": "SrcAS = 1", "description": "\\ud800"}', "application/json", 400, "bad_text"),
    (b'{"name": "x", "filter": "InIfName = \'\\udc80\'"}', "application/json", 400, "bad_text"),
])
def test_a_bad_saved_filter_is_refused_with_a_reason(served, body, content_type, status, reason) -> None:
    before = _store_figures(served)
    got, answer = _send(served, "POST", "/api/v0/filters", body, content_type=content_type)
    assert (got, answer["reason"]) == (status, reason), answer
    assert _store_figures(served) == before


def test_saved_filters_need_the_token_and_can_be_turned_off(served) -> None:
    assert _send(served, "POST", "/api/v0/filters", {"name": "x", "filter": "SrcAS = 1"}, token=None)[0] == 401
    assert _send(served, "PUT", "/api/v0/filters", {"name": "x", "filter": "SrcAS = 1"})[0] == 405
    frozen = served.model_copy(update={"api": served.api.model_copy(update={"saved_filters": False})})
    client = Client(App(frozen))
    answer = client.post("/api/v0/filters", json={"name": "x", "filter": "SrcAS = 1"},
                         headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 403 and answer.json["reason"] == "read_only"
    assert client.get("/api/v0/filters", headers={"Authorization": "Bearer s3cret"}).json["writable"] is False


def test_writes_are_rate_limited_and_capped(served, monkeypatch) -> None:
    writer = SavedFilterWriter(served)
    monkeypatch.setattr(writer_module, "WRITES_PER_MINUTE", 3)
    for i in range(3):
        writer.write(SavedFilter(f"f{i}", "SrcAS = 1"), list)
    with pytest.raises(APIError) as refused:
        writer.write(SavedFilter("f3", "SrcAS = 1"), list)
    assert (refused.value.status, refused.value.reason) == (429, "too_many_writes")
    with pytest.raises(APIError) as full:
        SavedFilterWriter(served).write(SavedFilter("new", "SrcAS = 1"), lambda: [f"n{i}" for i in range(MAX_SAVED)])
    assert (full.value.status, full.value.reason) == (409, "too_many_saved_filters")
    for i in range(3):
        writer._recent.clear()
        writer.write(SavedFilter(f"f{i}", ""), lambda i=i: [f"f{i}"], deleted=True)
    refusals = SavedFilterWriter(served)
    for _ in range(writer_module.WRITES_PER_MINUTE + 2):  # refused writes do not use up the rate
        with pytest.raises(APIError) as missing:
            refusals.write(SavedFilter("nobody", ""), list, deleted=True)
        assert missing.value.status == 404
    refusals.write(SavedFilter("after", "SrcAS = 1"), list)
    refusals.write(SavedFilter("after", ""), lambda: ["after"], deleted=True)


def test_parallel_saves_cannot_pass_the_cap(served, monkeypatch) -> None:
    """The names are read under the writer's lock: 12 parallel saves with room for 3 make 3."""
    from concurrent.futures import ThreadPoolExecutor

    from flows import saved_filters

    monkeypatch.setattr(saved_filters, "MAX_SAVED", 3)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: _send(served, "POST", "/api/v0/filters",
                                                {"name": f"race {i}", "filter": "SrcAS = 1"})[0], range(12)))
    assert sorted(answers) == [201] * 3 + [409] * 9
    listed = get(served, "/api/v0/filters")[1]["filters"]
    assert len(listed) == 3
    for entry in listed:
        assert _send(served, "DELETE", "/api/v0/filters/" + entry["name"].replace(" ", "%20"))[0] == 200


def test_a_request_line_too_long_for_http_server_is_answered_in_json(served) -> None:
    import socket

    host, port = served.api.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /api/v0/flows?filter=" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 414") or head.startswith(b"HTTP/1.1 414"), head
    assert b"application/json" in head and json.loads(body)["reason"] == "bad_request"


def test_a_malformed_request_line_with_quotes_is_still_valid_json(served) -> None:
    import socket

    host, port = served.api.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b'GET / HTTP/"1\\x\r\nHost: x\r\n\r\n')
        answer = conn.recv(65536)
    # (without a version it can read, http.server answers as HTTP/0.9 would: the body alone)
    assert json.loads(answer) == {"error": "Bad request version ('HTTP/'1''x')", "reason": "bad_request",
                                  "status": 400}
