"""The HTTP API on a real socket, over a chDB store holding known flows: correct rates, tables
chosen by range and dimensions, and every bad parameter refused with 4xx and a JSON reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from connectors import clickhouse, http
from flows import api, filter_assist, schema
from flows.settings import API, Settings
from tests.conftest import free_port

NOW = int(time.time())
T0 = NOW - NOW % 300 - 1800  # a 5-minute boundary half an hour ago
# (SrcAS, InIfName, Bytes, Packets, SamplingRate, seconds after T0)
ROWS = [
    (2906, "et-0/0/1", 1000, 10, 10, 0),
    (2906, "et-0/0/1", 3000, 30, 10, 65),
    (15169, "et-0/0/2", 2000, 20, 10, 70),
    (13335, "et-0/0/3", 500, 5, 1, 130),
    (64500, "et-0/0/4", 100, 1, 1, 10),
]


def _batch(rows):
    return schema.make_batch({
        "TimeReceived": [T0 + r[5] for r in rows],
        "ExporterAddress": [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])] * len(rows),
        "ExporterName": ["edge1"] * len(rows),
        "SrcAS": [r[0] for r in rows], "InIfName": [r[1] for r in rows],
        "InIfIndex": [i + 1 for i in range(len(rows))],
        "SrcAddr": [bytes(10) + b"\xff\xff" + bytes([10, 0, 0, i]) for i in range(len(rows))],
        "SrcCountry": [b"US"] * len(rows),
        "Bytes": [r[2] for r in rows], "Packets": [r[3] for r in rows],
        "SamplingRate": [r[4] for r in rows],
    }, len(rows))


@pytest.fixture(scope="module")
def served(tmp_path_factory, chdb_dir):
    """Migrated store with ROWS, and the API on a free port with a token."""
    import pyarrow as pa

    settings = Settings(clickhouse={"dsn": f"chdb:{chdb_dir}", "database": f"api_{uuid.uuid4().hex[:8]}"},
                        kafka={"brokers": [f"127.0.0.1:{free_port()}"]},  # nothing listens there
                        api=API(listen=f"127.0.0.1:{free_port()}", token="s3cret"))
    clickhouse.migrate(settings.clickhouse)
    client = clickhouse.connect(settings.clickhouse)
    client.insert_arrow(f"{settings.clickhouse.database}.flows", pa.Table.from_batches([_batch(ROWS)]))
    assert http.serve_outlet(settings)
    yield settings
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")


def get(settings, path, params=None, token="s3cret", body=None, content_type="text/plain"):
    url = http.api_base(settings) + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, data=body)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            raw = answer.read()
            return answer.status, (json.loads(raw) if answer.headers.get_content_type() == "application/json" else raw)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_flows_rates_top_n_and_other(served) -> None:
    status, body = get(served, "/api/v0/flows", {"from": T0, "to": T0 + 300, "dimensions": "SrcAS",
                                                 "limit": 2, "points": 5, "unit": "bps"})
    assert status == 200, body
    assert body["step"] == 60 and body["table"] == "flows_1m0s"
    assert body["time"] == [T0 + 60 * i for i in range(5)]
    series = {tuple(s["dimensions"]): s["values"] for s in body["series"]}
    assert [s["dimensions"] for s in body["series"]] == [["2906"], ["15169"], ["Other"]]
    assert series[("2906",)] == [1000 * 10 * 8 / 60, 3000 * 10 * 8 / 60, 0, 0, 0]
    assert series[("15169",)] == [0, 2000 * 10 * 8 / 60, 0, 0, 0]
    # Other = AS13335 (minute 2) + AS64500 (minute 0)
    assert series[("Other",)] == [100 * 8 / 60, 0, 500 * 8 / 60, 0, 0]


def test_flows_pps_with_filter_and_two_dimensions(served) -> None:
    status, body = get(served, "/api/v0/flows", {
        "from": T0, "to": T0 + 300, "dimensions": "SrcAS,InIfName", "points": 1, "unit": "pps",
        "filter": "SrcAS IN (2906, 15169) AND InIfName != 'et-0/0/2' AND SrcAddr = '10.0.0.0/24'"})
    assert status == 200, body
    assert body["step"] == 300 and body["table"] == "flows"  # SrcAddr is only in raw flows
    assert [(s["dimensions"], s["values"]) for s in body["series"]] == [(["2906", "et-0/0/1"], [400 / 300])]


def test_no_dimensions_is_the_total(served) -> None:
    hour = T0 - T0 % 3600
    status, body = get(served, "/api/v0/flows", {"from": hour, "to": hour + 3600, "points": 1})
    assert status == 200, body
    assert body["table"] == "flows_1h0m0s"
    total = sum(r[2] * r[4] * 8 for r in ROWS)
    seconds = min(hour + 3600, time.time()) - hour  # the hour may not be over yet
    [series] = body["series"]
    assert series["dimensions"] == [] and series["average"] == pytest.approx(total / seconds, rel=0.01)
    assert series["values"] == [pytest.approx(total / seconds, rel=0.01)]


@pytest.mark.parametrize("params, reason", [
    ({"dimensions": "SrcAS,Nope"}, "unknown_dimension"),
    ({"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"}, "bad_range"),
    ({"filter": "SrcAS = 1; DROP TABLE flows"}, "bad_filter"),
    ({"filter": "ExporterName = 'x' OR 1=1"}, "bad_filter"),
    ({"filter": "ExporterName = 'a' UNION SELECT 1"}, "bad_filter"),
    ({"filter": "Secret = 1"}, "unknown_column"),
    ({"limit": "100000"}, "bad_limit"),
    ({"limit": "-1"}, "bad_limit"),
    ({"points": "0"}, "bad_points"),
    ({"unit": "furlongs"}, "bad_unit"),
    ({"from": "yesterday-ish"}, "bad_time"),
    ({"from": "0", "to": str(NOW)}, "bad_range"),
    ({"dimensions": "SrcAS", "sql": "SELECT 1"}, "unknown_parameter"),
    # each of these answered 500 once (OverflowError, RecursionError, int() of other digits)
    ({"from": "-99999999999d"}, "bad_time"),
    ({"from": "-99999999999999999999w"}, "bad_time"),
    ({"to": "9" * 400}, "bad_time"),
    ({"from": "\u00b2"}, "bad_time"),
    ({"filter": "NOT " * 490 + "SrcAS = 1"}, "bad_filter"),
    ({"filter": "SrcAS = \u0663"}, "bad_filter"),
    ({"limit": "\u00b2"}, "bad_limit"),
    ({"limit": "\u0663"}, "bad_limit"),
    ({"points": "\uff11\uff10"}, "bad_points"),
])
def test_bad_parameters_get_400_with_a_reason(served, params, reason) -> None:
    status, body = get(served, "/api/v0/flows", params)
    assert status == 400
    assert body["reason"] == reason and body["error"]


def test_token_is_required_for_the_api_but_not_metrics(served) -> None:
    assert get(served, "/api/v0/exporters", token=None)[0] == 401
    status, body = get(served, "/api/v0/exporters", token="wrong")
    assert (status, body["reason"]) == (401, "unauthorized")
    status, raw = get(served, "/metrics", token=None)
    assert status == 200 and b'waxflow_api_errors_total{reason="unauthorized"}' in raw


def test_metrics_pass_promtool(served) -> None:
    from tests.test_inlet_flow import promtool_check

    if shutil.which("promtool") is None:
        pytest.skip(reason="promtool not installed (Debian package prometheus)")
    get(served, "/api/v0/flows", {"unit": "x"})  # an error counted by reason
    status, raw = get(served, "/metrics", token=None)
    assert b'waxflow_api_requests_total{endpoint="flows",status="4xx"}' in raw
    promtool_check(raw.decode())


def test_exporters_lists_interfaces(served) -> None:
    status, body = get(served, "/api/v0/exporters")
    assert status == 200
    [exporter] = body["exporters"]
    assert exporter["address"] == "192.0.2.1" and exporter["name"] == "edge1"
    assert {i["name"] for i in exporter["interfaces"]} >= {"et-0/0/1", "et-0/0/4"}


def test_read_only_sql(served) -> None:
    db = served.clickhouse.database
    status, body = get(served, "/api/v0/query", {"sql": f"SELECT count() AS n FROM {db}.flows"})
    assert (status, body) == (200, {"columns": ["n"], "rows": [[len(ROWS)]], "truncated": False})
    status, body = get(served, "/api/v0/query", body=json.dumps({"sql": f"SELECT sum(Bytes) FROM {db}.flows"}).encode(),
                       content_type="application/json")
    assert status == 200 and body["rows"] == [[sum(r[2] for r in ROWS)]]
    status, body = get(served, "/api/v0/query", body=f"DROP TABLE {db}.flows".encode())
    assert status == 400 and body["reason"] == "not_a_select" and "DROP" in body["error"]
    status, body = get(served, "/api/v0/query", body=b"SELECT 1 SETTINGS readonly = 0")
    assert status == 400
    assert get(served, "/api/v0/query", {"sql": f"SELECT count() FROM {db}.flows"})[1]["rows"] == [[len(ROWS)]]


def test_request_limits(served) -> None:
    status, body = get(served, "/api/v0/query", body=b"SELECT 1 -- " + b"x" * (http.server.MAX_BODY + 1))
    assert (status, body["reason"]) == (413, "too_large")
    status, body = get(served, "/api/v0/nothing")
    assert (status, body["reason"]) == (404, "not_found")


def test_healthz_and_dictionary_files(served) -> None:
    status, body = get(served, "/healthz")
    assert body["components"]["store"]["ok"] is True
    assert body["components"]["kafka"]["ok"] is False and status == 503  # no broker in this test
    status, raw = get(served, "/api/v0/clickhouse/asns.csv", token=None)  # public, like the script
    assert status == 200 and raw.startswith(b"asn,name\n") and b"\n2906," in raw


def test_init_script_fetches_the_dictionaries_without_the_token(served, tmp_path) -> None:
    """Run the script as a ClickHouse server would, its `clickhouse client` replaced by a
    recorder (no ClickHouse server here): both files arrive through the real API, which has a token."""
    if shutil.which("curl") is None:
        pytest.skip(reason="curl not installed")
    status, raw = get(served, "/api/v0/clickhouse/init.sh", token=None)
    assert status == 200 and b"asns_data FORMAT CSVWithNames" in raw
    script = tmp_path / "init.sh"
    script.write_bytes(raw)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "clickhouse"
    recorder.write_text('#!/bin/sh\necho "== $*" >> "$RECORD"\ncat >> "$RECORD"\n')
    recorder.chmod(0o755)
    record = tmp_path / "record.txt"
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(record)})
    assert done.returncode == 0, done.stderr
    text = record.read_text()
    assert f"INSERT INTO {served.clickhouse.database}.asns_data FORMAT CSVWithNames\nasn,name\n" in text
    assert "\n2906," in text and "\n6,tcp," in text.lower()
    assert "CREATE DICTIONARY" in text


def test_filter_grammar_binds_every_value() -> None:
    parsed = api.parse_filter("SrcCountry = 'US' and not (DstAS < 100 or InIfBoundary = 'external')")
    assert "US" not in parsed.sql and "100" not in parsed.sql
    assert sorted(parsed.parameters.values(), key=str) == [100, "US", "external"]
    with pytest.raises(api.QueryError):
        api.parse_filter("InIfBoundary = 'sideways'")


def test_queries_run_while_another_thread_inserts(served) -> None:
    """The API's own chDB handle beside the sink's: concurrent inserts and queries both succeed."""
    import threading

    import pyarrow as pa

    db = served.clickhouse.database
    client = clickhouse.connect(served.clickhouse)
    client.command(f"CREATE TABLE `{db}`.flows_copy AS `{db}`.flows")
    errors: list[BaseException] = []

    def insert() -> None:
        try:
            for i in range(20):
                # the same block 20 times, each its own insert (flows keeps a deduplication window)
                client.insert_arrow(f"{db}.flows_copy", pa.Table.from_batches([_batch(ROWS)]),
                                    settings={"insert_deduplication_token": f"copy-{i}"})
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    writer = threading.Thread(target=insert)
    writer.start()
    answers = []
    while writer.is_alive():
        answers.append(get(served, "/api/v0/query", {"sql": f"SELECT count() FROM {db}.flows_copy"}))
    writer.join()
    assert not errors
    assert answers and all(status == 200 for status, _ in answers)
    assert get(served, "/api/v0/query", {"sql": f"SELECT count() FROM {db}.flows_copy"})[1]["rows"] == [[20 * len(ROWS)]]


# --- the SQL guard: readonly=1 alone lets chDB write files and kill queries ------------------------

def _refused(served, sql: str) -> dict:
    status, body = get(served, "/api/v0/query", body=sql.encode())
    assert status == 400, (sql, body)
    assert body["reason"] in ("not_a_select", "forbidden_function", "syntax_error") and body["error"]
    return body


@pytest.mark.parametrize("template", [
    "SELECT concat(char(10), 'x', char(10)) INTO OUTFILE '{path}'",
    "SELECT concat(char(10), 'x', char(10)) INTO OUTFILE '{path}' APPEND",
    "SELECT 1) INTO OUTFILE '{path}' --",  # closing our parenthesis early
    "SELECT 1) INTO OUTFILE '{path}' APPEND SETTINGS max_threads = (1",  # and reopening one
    "SELECT 1 AS a) AS x JOIN (SELECT 1 AS a) AS y USING a INTO OUTFILE '{path}' SETTINGS max_threads = (1",
])
def test_query_cannot_write_files(served, tmp_path, template) -> None:
    path = tmp_path / "out.txt"
    _refused(served, template.format(path=path))
    assert not path.exists()


@pytest.mark.parametrize("sql, reason", [
    ("KILL QUERY WHERE 1", "not_a_select"),
    ("SYSTEM DROP DNS CACHE", "not_a_select"),
    ("SELECT 1; SELECT 2", "syntax_error"),
    ("SELECT 1 SETTINGS readonly = 0", "not_a_select"),
    ("SELECT 1) SETTINGS readonly = 0, max_threads = (1", "syntax_error"),
    ("SELECT file('/etc/hostname')", "forbidden_function"),
    ("SELECT * FROM FILE('/etc/hostname', 'LineAsString')", "forbidden_function"),
    ("SELECT * FROM url('http://127.0.0.1:9/', 'TSV', 'a String')", "forbidden_function"),
    ("SELECT * FROM executable('id', 'TSV', 'a String')", "forbidden_function"),
    ("SELECT 1 WHERE 1 IN (SELECT 1 FROM remote('127.0.0.1:9', system.one))", "forbidden_function"),
    ("SELECT 1 FORMAT JSON", "not_a_select"),
])
def test_query_is_one_plain_select(served, sql, reason) -> None:
    assert _refused(served, sql)["reason"] == reason


def test_query_may_still_use_computing_table_functions_and_subqueries(served) -> None:
    status, body = get(served, "/api/v0/query", body=b"WITH t AS (SELECT number FROM numbers(5))\n"
                                                    b"SELECT sum(number) AS s FROM t -- a comment")
    assert (status, body["rows"]) == (200, [[10]])


def test_waxflow_query_on_a_stopped_store_has_the_same_guard(served, tmp_path) -> None:
    """The CLI's direct fallback (nothing listens on api.listen) refuses what the API refuses."""
    import sys

    path = tmp_path / "cli.txt"
    config = tmp_path / "waxflow.yaml"
    config.write_text(json.dumps({"clickhouse": {"dsn": f"chdb:{tmp_path / 'store'}"},
                                  "api": {"listen": f"127.0.0.1:{free_port()}"}}))
    done = subprocess.run([sys.executable, "-m", "waxflow", "--config", str(config), "query",
                           f"SELECT 1) INTO OUTFILE '{path}' --"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "refused (syntax_error)" in done.stderr and not path.exists()
    done = subprocess.run([sys.executable, "-m", "waxflow", "--config", str(config), "query",
                           "SELECT file('/etc/hostname')"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "forbidden_function" in done.stderr
    done = subprocess.run([sys.executable, "-m", "waxflow", "--config", str(config), "query", "--format",
                           "jsonl", "SELECT number AS n FROM numbers(3)"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ['{"n":', '0}', '{"n":', '1}', '{"n":', '2}']


# -- exact rates over the window asked ---------------------------------------------------------

def _window_sum(settings, start: int, end: int, where: str = "1") -> float:
    client = clickhouse.connect(settings.clickhouse)
    return float(client.query(f"SELECT sum(Bytes * SamplingRate * 8) FROM `{settings.clickhouse.database}`.flows "
                              f"WHERE TimeReceived >= toDateTime({start}) AND TimeReceived < toDateTime({end}) "
                              f"AND {where}").result_rows[0][0] or 0)


@pytest.mark.parametrize("offset, length, points", [(30, 300, 1), (30, 900, 3), (-15, 600, 2), (61, 3000, 5)])
def test_rates_are_exact_over_windows_that_cut_the_tables_rows(served, offset, length, points) -> None:
    """A window that starts or ends inside a row of the 1m/5m/1h tables: the edges come from
    raw flows, so every rate equals a plain sum over `flows` divided by the window's seconds
    (the widened rows gave edge2.ams 713.7 Mbps where the sum said 1,145)."""
    start, end = T0 + offset, T0 + offset + length
    status, body = get(served, "/api/v0/flows", {"from": start, "to": end, "points": points})
    assert status == 200, body
    assert (body["from"], body["to"]) == (start, end)
    [series] = body["series"]
    seconds = min(end, time.time()) - start
    # (a window still running: its seconds so far moved on a little since the API answered)
    rel = 1e-9 if end < time.time() else 1e-3
    assert series["average"] == pytest.approx(_window_sum(served, start, end) / seconds, rel=rel)
    for t, width_end, value in zip(body["time"], body["time"][1:] + [end], series["values"]):
        width = min(width_end, time.time()) - t
        assert value == pytest.approx(_window_sum(served, t, width_end) / width, rel=rel), t


@pytest.fixture(scope="module")
def recent(served):
    """Flows in the last minutes, at seconds that cut the 1m and 5m rows, from two exporters."""
    import pyarrow as pa

    now = int(time.time())
    offsets = [400, 290, 241, 185, 120, 61, 59, 30, 12]  # seconds ago; 400 is outside a 5m window
    rows = {"TimeReceived": [now - o for o in offsets],
            "ExporterAddress": [bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 10 + i % 2]) for i in range(len(offsets))],
            "ExporterName": [("edge2.ams", "edge1.par")[i % 2] for i in range(len(offsets))],
            "Bytes": [1_000_000 + 1000 * i for i in range(len(offsets))], "Packets": [700] * len(offsets),
            "SamplingRate": [100] * len(offsets)}
    client = clickhouse.connect(served.clickhouse)
    client.insert_arrow(f"{served.clickhouse.database}.flows",
                        pa.Table.from_batches([schema.make_batch(rows, len(offsets))]))
    return served


def test_api_top_and_sql_agree_on_the_last_five_minutes(recent, tmp_path) -> None:
    from click.testing import CliRunner

    from waxflow.cli import main

    status, body = get(recent, "/api/v0/flows", {"from": "-5m", "dimensions": "ExporterName", "points": 1})
    assert status == 200, body
    start, end = body["from"], body["to"]
    api_rates = {s["dimensions"][0]: s["average"] for s in body["series"]}
    sql_rates = {name: _window_sum(recent, start, end, f"ExporterName = '{name}'") / (end - start)
                 for name in ("edge2.ams", "edge1.par")}
    assert api_rates == pytest.approx(sql_rates, rel=1e-3)  # (a second may pass between the two)
    config = tmp_path / "dataflows.yaml"
    config.write_text(json.dumps({
        "clickhouse": {"dsn": recent.clickhouse.dsn, "database": recent.clickhouse.database},
        "kafka": {"brokers": recent.kafka.brokers},
        "api": {"listen": recent.api.listen, "token": recent.api.token}}))
    done = CliRunner().invoke(main, ["--config", str(config), "top", "--by", "ExporterName", "--last", "5m",
                                     "--format", "jsonl"])
    assert done.exit_code == 0, done.output
    top_rates = {row["ExporterName"]: row["bps"] for row in map(json.loads, done.stdout.splitlines())}
    assert top_rates == pytest.approx(sql_rates, rel=1e-3)


# -- the filter editor's endpoints ----------------------------------------------------------------

@pytest.mark.parametrize("text, valid, position, reason", [
    ("SrcAS = 2906 AND InIfName = 'et-0/0/1'", True, None, None),
    ("SrcAS = ", False, 8, "bad_filter"),          # ends too soon: at the end
    ("SrcAS == 1", False, 7, "bad_filter"),         # the second '='
    ("  Nope = 1", False, 2, "unknown_column"),     # (leading spaces count)
    ("SrcAS = 'x'", False, 8, "bad_filter"),        # a number needed
    ("InIfBoundary = 'sideways'", False, 15, "bad_filter"),
])
def test_filter_validate_gives_the_error_position(served, text, valid, position, reason) -> None:
    status, body = get(served, "/api/v0/filter/validate", {"filter": text})
    assert status == 200, body
    assert body["valid"] is valid
    if valid:
        assert body["columns"] == ["InIfName", "SrcAS"]
    else:
        assert (body["position"], body["reason"], body["line"], body["column"]) == (position, reason, 1, position + 1)


def test_filter_complete_columns_operators_and_values_from_the_store(served) -> None:
    def complete(text, cursor=None):
        params = {"filter": text} if cursor is None else {"filter": text, "cursor": cursor}
        status, body = get(served, "/api/v0/filter/complete", params)
        assert status == 200, body
        return body

    columns = complete("SrcA")
    assert columns["context"] == "column" and "SrcAS" in [c["label"] for c in columns["completions"]]
    assert all(c["label"].lower().startswith("srca") for c in columns["completions"])
    operators = [c["label"] for c in complete("SrcAS ")["completions"]]
    assert operators == list(filter_assist.INT_OPERATORS)
    assert [c["label"] for c in complete("InIfName NOT ")["completions"]] == ["IN"]
    interfaces = complete("InIfName = 'et-0/0/")
    assert interfaces["context"] == "value" and interfaces["from"] == len("InIfName = ")
    assert [c["label"] for c in interfaces["completions"]] == ["'et-0/0/1'", "'et-0/0/2'", "'et-0/0/3'", "'et-0/0/4'"]
    exporters = complete("SrcAS = 1 AND ExporterName IN ('e")
    labels = [c["label"] for c in exporters["completions"]]
    assert "'edge1'" in labels and all(label.startswith("'e") for label in labels)
    # the cursor may sit inside the text
    assert complete("SrcAS = 1 AND Ex", cursor=len("SrcAS = 1 AND Ex"))["context"] == "column"
    assert complete("SrcAS  AND", cursor=6)["context"] == "operator"


@pytest.mark.parametrize("path, params, reason", [
    ("/api/v0/filter/complete", {"filter": "x", "cursor": "9"}, "bad_request"),
    ("/api/v0/filter/complete", {"filter": "x", "cursor": "-1"}, "bad_request"),
    ("/api/v0/filter/validate", {"filter": "x" * 2001}, "bad_request"),
    ("/api/v0/filter/validate", {"filter": "x", "sql": "DROP TABLE flows"}, "bad_request"),
])
def test_filter_endpoints_refuse_bad_input(served, path, params, reason) -> None:
    status, body = get(served, path, params)
    assert status == 400 and body["reason"] == reason, body


def test_a_window_older_than_raw_flows_falls_back_or_is_refused() -> None:
    """Raw flows kept 1 day: a 30-minute window 2 days ago at 100 points cannot be raw (it
    would answer nothing): the finest aggregated table that still holds it serves it; a column
    only raw flows have is refused, naming it."""
    now = 1_800_000_000
    ttl = {"flows": 86400, "flows_1m0s": 7 * 86400, "flows_5m0s": 30 * 86400, "flows_1h0m0s": 365 * 86400}
    start = now - 2 * 86400
    query = api.parse_flows_query({"from": str(start), "to": str(start + 1800), "points": "100"}, now=now)
    built = api.build_flows_sql(query, "db", ttl, now=now)
    assert built.table == "flows_1m0s" and (built.start, built.end) == (start - start % 60, start + 1800 + (-(start + 1800)) % 60)
    raw_only = api.parse_flows_query({"from": str(start), "to": str(start + 1800), "filter": "SrcAddr = '10.0.0.1'"},
                                     now=now)
    with pytest.raises(api.QueryError, match="SrcAddr") as refused:
        api.build_flows_sql(raw_only, "db", ttl, now=now)
    assert refused.value.reason == "out_of_retention"


def test_completion_quotes_values_as_the_language_writes_them_and_matches_names() -> None:
    value = filter_assist.Context("value", "'o", 15, column="ExporterName")
    labels = [c["label"] for c in filter_assist.complete(value, [("o'brien", ""), ('say "hi"', ""), ("""a'b"c""", "")])["completions"]]
    assert labels == ['"o\'brien"', "'say \"hi\"'"]  # the third cannot be written: left out
    for label in labels:
        assert filter_assist.validate(f"ExporterName = {label}")["valid"]
    by_name = filter_assist.Context("value", "goo", 8, column="SrcAS")
    assert [c["label"] for c in filter_assist.complete(by_name, [("15169", "Google")])["completions"]] == ["15169"]
    enum = filter_assist.Context("value", "'ex", 15, column="InIfBoundary")
    assert [c["label"] for c in filter_assist.complete(enum, [])["completions"]] == ["'external'"]


def test_an_address_compared_with_an_ordering_operator_is_marked_at_the_operator(served) -> None:
    status, body = get(served, "/api/v0/filter/validate", {"filter": "SrcAddr < '10.0.0.1'"})
    assert status == 200 and (body["valid"], body["position"]) == (False, 8)


@pytest.mark.parametrize("params", [{"filter": "x", "cursor": "9" * 5000}, [("filter", "x"), ("cursor", "0"), ("cursor", "1")]])
def test_an_absurd_or_repeated_cursor_is_a_400(served, params) -> None:
    url = http.api_base(served) + "/api/v0/filter/complete?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 400 and json.loads(answer.value.read())["reason"] == "bad_request"


def test_l2_bps_adds_the_ethernet_header_and_fcs_per_packet(served) -> None:
    start, end = T0, T0 + 300
    status, body = get(served, "/api/v0/flows", {"from": start, "to": end, "points": 1, "unit": "l2bps"})
    assert status == 200, body
    client = clickhouse.connect(served.clickhouse)
    bits = client.query(f"SELECT sum((Bytes + 18 * Packets) * SamplingRate * 8) FROM `{served.clickhouse.database}`.flows "
                        f"WHERE TimeReceived >= toDateTime({start}) AND TimeReceived < toDateTime({end})").result_rows[0][0]
    assert body["series"][0]["average"] == pytest.approx(bits / 300, rel=1e-9)
    assert body["series"][0]["average"] > sum(r[2] * r[4] * 8 for r in ROWS) / 300  # more than L3


def test_flows_name_the_as_numbers_of_their_series(served) -> None:
    status, body = get(served, "/api/v0/flows", {"from": T0, "to": T0 + 300, "dimensions": "SrcAS", "points": 1})
    assert status == 200, body
    client = clickhouse.connect(served.clickhouse)
    known = dict(client.query(f"SELECT toString(asn), name FROM `{served.clickhouse.database}`.asns_data "
                              "WHERE asn IN (2906, 15169, 13335, 64500) AND name != ''").result_rows)
    assert known and body["names"] == known  # (64500 is private: no name)
    status, body = get(served, "/api/v0/flows", {"from": T0, "to": T0 + 300, "dimensions": "InIfName", "points": 1})
    assert body["names"] == {}
