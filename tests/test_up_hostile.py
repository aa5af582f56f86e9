"""An attacker's run against a real `waxflow up` (token set, known flows stored): more than 50
hostile queries through POST /api/v0/query, each answered with the expected status and reason,
and afterwards the store is exactly as before (same tables, views and dictionaries; same row
counts and sums) and no file named in a query exists. A heavy query does not freeze /healthz or
/metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows import ddl
from tests.test_up import ROOT, Up, _config, shut_down

TOKEN = "hostile-test-token"
DATAGRAMS, RECORDS = 20, 10
FLOWS = DATAGRAMS * RECORDS


def _v5(sequence: int, exporter_octet: int) -> bytes:
    """A NetFlow v5 datagram of RECORDS plausible flows (RFC-less, Cisco's documented layout)."""
    now = int(time.time())
    header = struct.pack("!HHIIIIBBH", 5, RECORDS, 3_600_000, now, 0, sequence, 0, exporter_octet, 0)
    records = b"".join(struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH",
                                   bytes([10, 0, exporter_octet, i]), bytes([192, 0, 2, i]), bytes(4),
                                   1, 2, 3, 1500 + i, 3_590_000, 3_599_000, 1024 + i, 443, 0, 0x18, 6, 0,
                                   64500, 64501, 24, 24, 0)
                       for i in range(RECORDS))
    return header + records


class Hostile(Up):
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.output = workdir / "up.out"
        self.proc = subprocess.Popen([sys.executable, "-m", "waxflow", "-c", "cfg.yaml", "up"], cwd=workdir,
                                     stdout=open(self.output, "wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
        self.children = set()
        config = yaml.safe_load((workdir / "cfg.yaml").read_text())
        self.base = f"http://{config['api']['listen']}"
        self.netflow = config["inlet"]["listeners"][0]["port"]

    def post(self, sql: str, token: str | None = TOKEN, timeout: float = 60) -> tuple[int, dict]:
        request = urllib.request.Request(self.base + "/api/v0/query", data=sql.encode("utf-8", "surrogatepass"),
                                         method="POST", headers={"Content-Type": "text/plain"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def rows(self, sql: str) -> list[list]:
        status, body = self.post(sql)
        assert status == 200, (sql, body)
        return body["rows"]


def _store_figures(stack: Hostile) -> dict[str, list]:
    """What must not change: row counts and sums of every table (sums where merges may fold rows)."""
    figures = {"flows": stack.rows("SELECT count(), sum(Bytes), sum(Packets) FROM waxflow.flows")}
    for table in ddl.AGGREGATE_TABLES:
        figures[table] = stack.rows(f"SELECT sum(Bytes), sum(Packets) FROM waxflow.{table}")
    figures["exporters"] = stack.rows("SELECT uniqExact(ExporterAddress, IfIndex) FROM waxflow.exporters")
    for spec in ddl.DICTIONARIES:
        figures[spec.table] = stack.rows(f"SELECT count() FROM waxflow.{spec.table}")
        figures[spec.name] = stack.rows(f"SELECT count() FROM waxflow.{spec.table} "
                                        f"WHERE dictHas('waxflow.{spec.name}', {spec.key})")
    return figures


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    _config(workdir)
    config = yaml.safe_load((workdir / "cfg.yaml").read_text())
    config["api"]["token"] = TOKEN
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    up = Hostile(workdir)
    up.outfiles = workdir / "outfiles"
    up.outfiles.mkdir()
    try:
        up.wait_ready()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for sequence in range(DATAGRAMS):
                out.sendto(_v5(sequence * RECORDS, 1 + sequence % 2), ("127.0.0.1", up.netflow))
        deadline = time.monotonic() + 90
        while up.rows("SELECT count() FROM waxflow.flows") != [[FLOWS]]:
            assert time.monotonic() < deadline, up.text()
            time.sleep(1)
        time.sleep(2)  # the materialized views are filled in the same insert; give merges a moment
        up.before = _store_figures(up)
        yield up
    finally:
        shut_down(up)


# (query, expected reason). {out} is a file path that must never be written.
NOT_SELECT = "not_a_select"
SYNTAX = "syntax_error"
FUNCTION = "forbidden_function"
TABLE = "forbidden_table"
FAILED = "query_failed"
HOSTILE = [
    # multi-statement tricks: ClickHouse's parser refuses more than one statement
    ("SELECT 1) ; DROP TABLE waxflow.flows; SELECT (1", SYNTAX),
    ("SELECT 1; DROP TABLE waxflow.flows", SYNTAX),
    ("SELECT 1;DROP TABLE waxflow.flows;", SYNTAX),
    ("SELECT 1\n;\nTRUNCATE TABLE waxflow.flows", SYNTAX),
    ("SELECT 1; CREATE TABLE waxflow.x (a String) ENGINE = Memory; "
     "INSERT INTO waxflow.x SELECT * FROM file('/etc/passwd')", SYNTAX),
    ("SELECT 1; INSERT INTO waxflow.flows (Bytes) VALUES (1)", SYNTAX),
    ("SELECT 1) AS x; ALTER TABLE waxflow.flows DELETE WHERE 1; SELECT (1", SYNTAX),
    ("SELECT 1 UNION ALL SELECT 2; DROP DATABASE waxflow", SYNTAX),
    # comments and quotes that try to hide or break out
    ("SELECT 1 /* ; DROP TABLE waxflow.flows */; DROP TABLE waxflow.flows", SYNTAX),
    ("SELECT 1 -- harmless\n; DROP TABLE waxflow.flows", SYNTAX),
    ("SELECT '1'; DROP TABLE waxflow.flows; SELECT '", SYNTAX),
    ("SELECT \"x\"; DROP TABLE waxflow.flows", SYNTAX),
    ("SELECT `a`; DROP TABLE waxflow.flows; SELECT `b`", SYNTAX),
    ("SELECT 1 /* unclosed ; DROP TABLE waxflow.flows", SYNTAX),
    ("SELECT $$; DROP TABLE waxflow.flows; $$; DROP TABLE waxflow.flows", SYNTAX),
    ("SELECT 1\x00; DROP TABLE waxflow.flows", SYNTAX),
    # statements that are not a SELECT, alone
    ("DROP TABLE waxflow.flows", NOT_SELECT),
    ("DROP DATABASE waxflow", NOT_SELECT),
    ("TRUNCATE TABLE waxflow.flows", NOT_SELECT),
    ("ALTER TABLE waxflow.flows DELETE WHERE 1", NOT_SELECT),
    ("ALTER TABLE waxflow.flows DROP COLUMN Bytes", NOT_SELECT),
    ("RENAME TABLE waxflow.flows TO waxflow.gone", NOT_SELECT),
    ("DETACH TABLE waxflow.flows", NOT_SELECT),
    ("CREATE TABLE waxflow.x ENGINE = Memory AS SELECT 1", NOT_SELECT),
    ("INSERT INTO waxflow.flows (Bytes) VALUES (1)", NOT_SELECT),
    ("INSERT INTO FUNCTION file('{out}', 'CSV', 'a String') SELECT 'x'", NOT_SELECT),
    ("OPTIMIZE TABLE waxflow.flows FINAL", NOT_SELECT),
    ("SYSTEM STOP MERGES", NOT_SELECT),
    ("SYSTEM DROP DNS CACHE", NOT_SELECT),
    ("KILL QUERY WHERE 1", NOT_SELECT),
    ("SET readonly = 0", NOT_SELECT),
    ("USE system", NOT_SELECT),
    ("EXPLAIN SELECT 1", NOT_SELECT),
    ("SHOW TABLES FROM system", NOT_SELECT),
    ("DESCRIBE TABLE waxflow.flows", NOT_SELECT),
    ("GRANT ALL ON *.* TO default", NOT_SELECT),
    ("CREATE USER evil IDENTIFIED BY 'x'", NOT_SELECT),
    # output clauses and settings inside a SELECT
    ("SELECT 'x' INTO OUTFILE '{out}'", NOT_SELECT),
    ("SELECT 'x' INTO OUTFILE '{out}' APPEND", NOT_SELECT),
    ("SELECT 'x' INTO OUTFILE '{out}' TRUNCATE FORMAT CSV", NOT_SELECT),
    ("SELECT * FROM numbers(3) INTO OUTFILE '{out}' -- trailing", NOT_SELECT),
    ("SELECT 1) INTO OUTFILE '{out}' --", SYNTAX),
    ("SELECT 1 FORMAT JSON", NOT_SELECT),
    ("SELECT 1 SETTINGS readonly = 0", NOT_SELECT),
    ("SELECT count() FROM waxflow.flows SETTINGS max_execution_time = 0, max_result_bytes = 0", NOT_SELECT),
    ("SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", NOT_SELECT),
    ("WITH x AS (SELECT 1 SETTINGS max_memory_usage = 0) SELECT * FROM x", NOT_SELECT),
    # table functions that reach outside, in every syntactic position
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", FUNCTION),
    ("SELECT * FROM FILE('/etc/passwd', 'LineAsString')", FUNCTION),
    ("SELECT * FROM url('http://127.0.0.1:9/', 'TSV', 'a String')", FUNCTION),
    ("SELECT * FROM executable('id', 'TSV', 'a String')", FUNCTION),
    ("SELECT * FROM remote('127.0.0.1:9', system.one)", FUNCTION),
    ("SELECT * FROM s3('http://127.0.0.1:9/b/k', 'CSV', 'a String')", FUNCTION),
    ("SELECT * FROM merge('system', '.*')", FUNCTION),
    ("SELECT * FROM input('a String')", FUNCTION),
    ("SELECT * FROM numbers(1) AS n JOIN file('/etc/passwd', 'LineAsString') AS f ON 1", FUNCTION),
    ("SELECT 1 WHERE 1 IN (SELECT 1 FROM file('/etc/passwd', 'LineAsString'))", FUNCTION),
    ("WITH f AS (SELECT * FROM file('/etc/passwd', 'LineAsString')) SELECT * FROM f", FUNCTION),
    ("SELECT (SELECT count() FROM file('/etc/passwd', 'LineAsString'))", FUNCTION),
    ("SELECT * FROM view(SELECT * FROM file('/etc/passwd', 'LineAsString'))", FUNCTION),
    ("SELECT 1 UNION ALL SELECT count() FROM url('http://127.0.0.1:9/', 'TSV', 'a String')", FUNCTION),
    ("SELECT file('/etc/passwd')", FUNCTION),
    ("SELECT length(file('/etc/hostname')) FROM numbers(1)", FUNCTION),
    ("SELECT hasColumnInTable('system', 'users', 'auth_type')", FUNCTION),  # other databases' catalogue
    ("SELECT getServerSetting('path')", FUNCTION),
    ("SELECT filesystemAvailable()", FUNCTION),
    # one block of it runs for minutes: time limits are checked between blocks
    ("SELECT editDistance(repeat(toString(number), 65000), repeat('b', 65000)) FROM numbers(12)", FUNCTION),
    ("SELECT 1 FORMAT TabSeparatedRaw", FAILED),  # passes the tree (the client's own format), fails to run
    # other databases: system.* shows other queries, users, settings
    ("SELECT * FROM system.tables", TABLE),
    ("SELECT query FROM system.query_log", TABLE),
    ("SELECT * FROM `system`.`users`", TABLE),
    ("SELECT * FROM waxflow.flows AS f JOIN system.settings AS s ON 1", TABLE),
    ("SELECT 1 WHERE 1 IN system.one", TABLE),
    ("SELECT 1 WHERE 'x' IN (SELECT name FROM system.databases)", TABLE),
    ("WITH t AS (SELECT * FROM system.processes) SELECT * FROM t", TABLE),
    ("SELECT (SELECT count() FROM system.parts)", TABLE),
    ("SELECT * FROM information_schema.tables", TABLE),
]
ALLOWED = [
    ("SELECT ';DROP TABLE waxflow.flows;' AS s", [[";DROP TABLE waxflow.flows;"]]),
    ("SELECT '--' AS s -- ; DROP TABLE waxflow.flows", [["--"]]),
    ("SELECT 1 AS one;", [[1]]),
    ("SELECT 'a\\'; DROP TABLE waxflow.flows; --' AS s", [["a'; DROP TABLE waxflow.flows; --"]]),  # one literal
    ("SELECT 1 AS one /* ; DROP TABLE waxflow.flows */", [[1]]),
    ("WITH t AS (SELECT number FROM numbers(4)) SELECT sum(number) AS s FROM t", [[6]]),
    ("SELECT count() AS n FROM waxflow.flows WHERE DstPort = 443", [[FLOWS]]),
    ("SELECT x FROM (SELECT 2 AS x UNION ALL SELECT 3 AS x) ORDER BY x", [[2], [3]]),
    ("(SELECT 5 AS x)", [[5]]),
    ("SELECT 1 AS x LIMIT 0", []),
    ("SELECT nan AS a, inf AS b", [["nan", "inf"]]),  # JSON has neither
]


def test_hostile_suite_is_large_enough() -> None:
    assert len(HOSTILE) >= 50


def _catalogue(workdir: Path) -> dict:
    """The stopped store read with a plain chDB client (not the API's guard: system tables)."""
    script = (
        "import json, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn='chdb:data/clickhouse')\n"
        "t = [r[0] for r in c.query(\"SELECT name FROM system.tables WHERE database = 'waxflow' "
        "ORDER BY name\").result_rows]\n"
        "d = [r[0] for r in c.query(\"SELECT name FROM system.databases WHERE name NOT IN "
        "('system', 'default', 'information_schema', 'INFORMATION_SCHEMA', '_local') ORDER BY name\").result_rows]\n"
        "n = c.query('SELECT count() FROM waxflow.flows').result_rows[0][0]\n"
        "print(json.dumps({'tables': t, 'databases': d, 'flows': n}))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_tokenless_and_wrong_token_requests_are_refused(stack) -> None:
    for token in (None, "wrong", TOKEN + "x", ""):
        status, body = stack.post("SELECT 1", token=token)
        assert (status, body["reason"]) == (401, "unauthorized")


def test_a_heavy_query_does_not_freeze_healthz_or_metrics(stack) -> None:
    """`SELECT repeat('x', 1000000) FROM numbers(1000)` is a 1 GB answer: it fails on the memory
    limit, and meanwhile /healthz and /metrics answer at once."""
    results: list = []
    heavy = threading.Thread(target=lambda: results.append(
        stack.post("SELECT repeat('x', 1000000) FROM numbers(1000)", timeout=120)))
    started = time.monotonic()
    heavy.start()
    latencies = []
    while heavy.is_alive() or len(latencies) < 5:
        for path in ("/healthz", "/metrics"):
            begin = time.monotonic()
            try:
                with urllib.request.urlopen(stack.base + path, timeout=10) as answer:
                    answer.read()
            except urllib.error.HTTPError as err:  # 503 when a component is down is still an answer
                err.read()
            latencies.append(time.monotonic() - begin)
        time.sleep(0.2)
        assert time.monotonic() - started < 120
    heavy.join()
    [(status, body)] = results
    # one block of the answer would be ~1 GB: stopped by api.max_memory, never decoded
    assert (status, body["reason"]) == (400, "query_failed"), body
    assert "memory limit" in body["error"].lower()
    assert max(latencies) < 2.0, latencies
    # and the API still answers queries afterwards
    assert stack.post("SELECT 41 + 1 AS x")[1]["rows"] == [[42]]


def test_hostile_queries_are_refused_and_leave_the_store_unchanged(stack) -> None:
    out = stack.outfiles / "written.txt"
    wrong = []
    for template, reason in HOSTILE:
        sql = template.replace("{out}", str(out))
        status, body = stack.post(sql)
        if (status, body.get("reason")) != (400, reason) or not body.get("error"):
            wrong.append((sql, status, body, reason))
        if _store_figures(stack) != stack.before:  # after each request, not only at the end
            wrong.append((sql, "changed the store", _store_figures(stack)))
        if any(stack.outfiles.iterdir()):
            wrong.append((sql, "wrote a file"))
    assert not wrong, "\n".join(map(repr, wrong))
    for sql, rows in ALLOWED:
        status, body = stack.post(sql)
        assert (status, body.get("rows")) == (200, rows), (sql, body)
    assert not any(stack.outfiles.iterdir()), "a query wrote a file"
    assert stack.proc.poll() is None, stack.text()
    assert _store_figures(stack) == stack.before


def test_after_the_attack_the_store_holds_exactly_what_the_migrations_made(stack) -> None:
    """Run last: stops the stack, then reads the store's own catalogue."""
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(120) == 0, stack.text()
    catalogue = _catalogue(stack.workdir)
    expected = set(ddl.TABLES) | {ddl.SAVED_FILTERS, ddl.ALERTS} | {v.name for v in ddl.expected_views()} | \
        {d.table for d in ddl.DICTIONARIES} | {d.name for d in ddl.DICTIONARIES}
    assert catalogue["tables"] == sorted(expected)
    assert catalogue["databases"] == ["waxflow"]
    assert catalogue["flows"] == FLOWS
    assert not any(stack.outfiles.iterdir())
