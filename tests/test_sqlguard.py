"""The SQL guard (flows/sqlguard.py) on trees ClickHouse's own parser printed, and the API's
isolation: a bounded query pool answers 503 busy instead of queueing, /healthz and /metrics never
wait for it, and connections beyond api.max_connections get a 503 at once."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from connectors import clickhouse, http
from connectors.http import ReadOnlySession
from flows import sqlguard
from flows.settings import Settings
from tests.conftest import free_port

# EXPLAIN AST as chDB 26.9 prints it (the client adds `FORMAT Native`, the last line)
SELECT_ONE = ["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", "  SelectQuery (children 1)",
              "   ExpressionList (children 1)", "    Literal UInt64_1", " Identifier Native"]
OUTFILE = ["SelectWithUnionQuery (children 3)", " ExpressionList (children 1)", "  SelectQuery (children 1)",
           "   ExpressionList (children 1)", "    Literal UInt64_1", " Literal '/tmp/x'", " Identifier Native"]
KILL = ["KillQueryQuery Literal_UInt64_1 ASYNC (children 2)", " Literal UInt64_1", " Identifier Native"]
SETTINGS = ["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", "  SelectQuery (children 3)",
            "   ExpressionList (children 1)", "    Asterisk", "   TablesInSelectQuery (children 1)",
            "    TablesInSelectQueryElement (children 1)", "     TableExpression (children 1)",
            "      TableIdentifier t", "   Set", " Identifier Native"]
IN_SYSTEM = ["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", "  SelectQuery (children 2)",
             "   ExpressionList (children 1)", "    Literal UInt64_1", "   Function in (children 1)",
             "    ExpressionList (children 2)", "     Identifier a", "     Identifier system.numbers",
             " Identifier Native"]
FORMAT_JSON = SELECT_ONE[:-1] + [" Identifier JSON"]


def _table_function(name: str, table: str = "") -> list[str]:
    return ["SelectWithUnionQuery (children 2)", " ExpressionList (children 1)", "  SelectQuery (children 2)",
            "   ExpressionList (children 1)", "    Asterisk", "   TablesInSelectQuery (children 1)",
            "    TablesInSelectQueryElement (children 1)", "     TableExpression (children 1)",
            f"      Function {name} (children 1)" if name else f"      TableIdentifier {table} (alias x)",
            *(["       ExpressionList (children 1)", "        Literal UInt64_3"] if name else []),
            " Identifier Native"]


@pytest.mark.parametrize("lines", [SELECT_ONE, _table_function("numbers"), _table_function("", "waxflow.flows"),
                                   _table_function("", "flows"), _table_function("generateRandom")])
def test_plain_selects_pass(lines) -> None:
    sqlguard.check_ast(lines, "waxflow")


@pytest.mark.parametrize("lines, reason", [
    (OUTFILE, "not_a_select"), (KILL, "not_a_select"), (SETTINGS, "not_a_select"), (FORMAT_JSON, "not_a_select"),
    (_table_function("file"), "forbidden_function"), (_table_function("URL"), "forbidden_function"),
    (_table_function("merge"), "forbidden_function"), (_table_function("remoteSecure"), "forbidden_function"),
    (_table_function("", "system.tables"), "forbidden_table"), (_table_function("", "`other`.t"), "forbidden_table"),
    (IN_SYSTEM, "forbidden_table"),
])
def test_everything_else_is_refused(lines, reason) -> None:
    with pytest.raises(sqlguard.GuardError) as err:
        sqlguard.check_ast(lines, "waxflow")
    assert err.value.reason == reason and str(err.value)


@pytest.mark.parametrize("text, reason", [("", "bad_request"), ("  \n", "bad_request"),
                                          ("SELECT 1\0", "syntax_error"),
                                          ("SELECT '" + "x" * 70_000 + "'", "too_large")])
def test_text_checks(text, reason) -> None:
    with pytest.raises(sqlguard.GuardError) as err:
        sqlguard.check_text(text)
    assert err.value.reason == reason


@pytest.mark.parametrize("canonical, ok", [("SELECT 1", True), ("WITH 1 AS x\nSELECT x", True), ("(SELECT 1)", True),
                                           ("INSERT INTO t SELECT 1", False), ("KILL QUERY WHERE 1 ASYNC", False),
                                           ("SYSTEM DROP DNS CACHE", False), ("", False)])
def test_canonical_text_must_be_a_select(canonical, ok) -> None:
    if ok:
        assert sqlguard.check_canonical(canonical) == canonical
    else:
        with pytest.raises(sqlguard.GuardError):
            sqlguard.check_canonical(canonical)


# --- the API's isolation, on a real socket over chDB ----------------------------------------

@pytest.fixture(scope="module")
def narrow(chdb_dir):
    """One query slot, a short queue, four connections."""
    settings = Settings(clickhouse={"dsn": f"chdb:{chdb_dir}", "database": f"iso_{uuid.uuid4().hex[:8]}"},
                        kafka={"brokers": [f"127.0.0.1:{free_port()}"]},
                        api={"listen": f"127.0.0.1:{free_port()}", "query_slots": 1, "queue_wait": "500ms",
                             "max_connections": 4})
    clickhouse.migrate(settings.clickhouse)
    assert http.serve_outlet(settings)
    yield settings
    clickhouse.connect(settings.clickhouse).command(f"DROP DATABASE IF EXISTS `{settings.clickhouse.database}`")


def _get(settings, path, body=None, timeout=30):
    request = urllib.request.Request(http.api_base(settings) + path, data=body)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            return answer.status, raw
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_a_busy_pool_answers_503_and_healthz_does_not_wait(narrow) -> None:
    slow: list = []
    runner = threading.Thread(target=lambda: slow.append(
        _get(narrow, "/api/v0/query", b"SELECT sleepEachRow(0.5) AS s FROM numbers(5)")))
    runner.start()
    time.sleep(0.8)  # the slow query holds the only slot now
    begin = time.monotonic()
    status, body = _get(narrow, "/api/v0/query", b"SELECT 1")
    assert (status, json.loads(body)["reason"]) == (503, "busy")
    assert time.monotonic() - begin < 2.0  # api.queue_wait, not the slow query's 2.5 s
    begin = time.monotonic()
    assert _get(narrow, "/healthz")[0] in (200, 503) and _get(narrow, "/metrics")[0] == 200
    assert time.monotonic() - begin < 1.0
    runner.join(30)
    assert slow[0][0] == 200
    assert json.loads(_get(narrow, "/api/v0/query", b"SELECT 2 AS x")[1])["rows"] == [[2]]


def test_connections_beyond_the_limit_get_503_at_once(narrow) -> None:
    host, port = http.listen_address(narrow)
    idle = [socket.create_connection((host, port)) for _ in range(4)]  # hold every connection slot
    try:
        time.sleep(0.3)
        begin = time.monotonic()
        status, body = _get(narrow, "/metrics", timeout=5)
        assert (status, json.loads(body)["reason"]) == (503, "overloaded")
        assert time.monotonic() - begin < 1.0
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 5
    while _get(narrow, "/metrics")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_read_only_session_cannot_write_even_when_asked_directly(narrow) -> None:
    """Below the guard: the session itself refuses writes, DDL and settings (chDB included)."""
    session = ReadOnlySession(narrow, "user")
    try:
        for sql in ("CREATE TABLE t2 (a UInt8) ENGINE = Memory", "INSERT INTO exporters (IfIndex) VALUES (1)",
                    "DROP TABLE flows", "SET readonly = 0", "SELECT 1 SETTINGS readonly = 0",
                    "SELECT * FROM file('/etc/hostname', 'LineAsString')"):
            with pytest.raises(Exception, match="(?i)readonly|read.only|cannot|not allowed"):
                session.client.command(sql)
        assert session.query("SELECT count() FROM flows").result_rows == [(0,)]
    finally:
        session.close()


def test_error_messages_are_tidied_in_bounded_time() -> None:
    """The store's message echoes the user's text: a 64 KB one shaped to make a pattern backtrack
    costs milliseconds, and chDB's nested prefixes and version notes are gone."""
    from connectors.http.queries import first_line

    begin = time.monotonic()
    line = first_line(RuntimeError("Code: 62. DB::Exception: Code: 62. DB::Exception: Syntax error: 'x"
                                    + " (version )" * 5800))
    assert time.monotonic() - begin < 0.1 and len(line) <= 500
    assert line.startswith("Code: 62: Syntax error")
    nested = RuntimeError("Code: 241. DB::Exception: Code: 241. DB::Exception: Query memory limit exceeded. "
                          "(MEMORY_LIMIT_EXCEEDED) (version 26.9.2.1). (MEMORY_LIMIT_EXCEEDED) (version 26.9.2.1).")
    assert first_line(nested) == "Code: 241: Query memory limit exceeded. (MEMORY_LIMIT_EXCEEDED) (MEMORY_LIMIT_EXCEEDED)"
