"""Store sessions for API queries, and the queries themselves.

Every API query runs on a `ReadOnlySession`: a store client of its own (never the sink's), whose
limits are set once and then frozen by `SET readonly = 1`, so nothing it runs can write, create,
drop, change a setting or run SYSTEM — chDB included, where per-query settings would otherwise
ride as a SETTINGS clause the user's text could add to. Against a ClickHouse server the same
limits and `readonly=1` (last: it forbids changing settings after it) go with each query, as the
read-only user of `api.dsn` when set.

A bounded `QueryPool` of such sessions runs `api.query_slots` queries at once; a request that
finds none free within `api.queue_wait` is answered 503 busy instead of queueing without end.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import clickhouse_connect

from connectors.clickhouse import ttl_seconds
from connectors.http.errors import APIError
from flows import alerts_api, api, filter_assist, graph, saved_filters, sqlguard, widgets
from flows.settings import Settings
from flows.sqlguard import session_limits


def query_client(settings: Settings) -> Any:
    """A client of its own for API queries: as `api.dsn`'s read-only user on a ClickHouse
    server when set, else as `clickhouse.dsn` (a new chDB handle on the embedded store)."""
    return clickhouse_connect.get_client(dsn=settings.api.dsn or settings.clickhouse.dsn)


EXPLAIN_FORMAT = "TabSeparatedRaw"


class ReadOnlySession:
    """One store client that can only read. `query()` takes no settings: they are the session's."""

    def __init__(self, settings: Settings, kind: str = "api",
                 factory: Callable[[Settings], Any] = query_client) -> None:
        self.database = settings.clickhouse.database
        self.embedded = (settings.api.dsn or settings.clickhouse.dsn).startswith("chdb:")
        self.client = factory(settings)
        limits = session_limits(settings, kind)
        if self.embedded:
            exists = self.client.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                                       parameters={"db": self.database}).result_rows[0][0]
            if exists:  # unqualified table names are the waxflow database's
                self.client.command(f"USE `{self.database}`")
            for name, value in limits.items():
                self.client.command(f"SET {name} = {_setting_literal(value)}")
            self.client.command("SET readonly = 1")
            self._settings: dict[str, Any] | None = None
        else:
            self._settings = {**limits, "readonly": 1}

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.client.query(sql, parameters=parameters, settings=self._settings)

    def text_lines(self, sql: str) -> list[str]:
        """A one-column answer as lines of text, `FORMAT EXPLAIN_FORMAT` added by the client
        (raw: clickhouse-connect takes a query ending in `LIMIT 0` for a metadata probe)."""
        raw = self.client.raw_query(sql, fmt=EXPLAIN_FORMAT, settings=self._settings)
        return raw.decode("utf-8", errors="replace").splitlines()

    def blocks(self, sql: str) -> Any:
        """A context manager streaming the result's row blocks (see clickhouse-connect)."""
        return self.client.query_row_block_stream(sql, settings=self._settings)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # a handle left in a bad state by a failed query: closing is best effort
            pass


def _setting_literal(value: Any) -> str:
    return str(int(value)) if isinstance(value, (int, bool)) else "'" + str(value).replace("'", "''") + "'"


class QueryPool:
    """At most `slots` sessions in use at once, each used by one request at a time. A session
    whose query failed is closed (chDB can keep the rest of a stopped stream on the handle) and
    replaced by a fresh one on next use."""

    def __init__(self, slots: int, wait: float, factory: Callable[[], ReadOnlySession]) -> None:
        self.wait, self._factory = wait, factory
        self._slots = threading.BoundedSemaphore(slots)
        self._idle: list[ReadOnlySession] = []
        self._lock = threading.Lock()

    def run(self, work: Callable[[ReadOnlySession], Any]) -> Any:
        if not self._slots.acquire(timeout=self.wait):
            raise APIError(503, "busy", "every query slot is in use; try again shortly")
        session: ReadOnlySession | None = None
        try:
            with self._lock:
                session = self._idle.pop() if self._idle else None
            if session is None:
                session = self._factory()
            result = work(session)
            with self._lock:
                self._idle.append(session)
            session = None
            return result
        finally:
            if session is not None:
                session.close()
            self._slots.release()


# --- the queries -------------------------------------------------------------------------------

class UserSQLError(APIError):
    """A user's SQL refused (400): by the guard, the parser, or the store when it ran."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(400, reason, message)


_NESTED_PREFIX = re.compile(r"(?:Code: \d+\. DB::Exception: )+")
_VERSION = re.compile(r" \(version [0-9.]+\)\.?")


def first_line(err: Exception, limit: int = 500) -> str:
    """ClickHouse's message without the nesting chDB adds (`Code: 241. DB::Exception: ` three
    times) and version notes. Cut before any pattern runs: the message echoes the user's text."""
    text = str(err).strip()[:4 * limit]
    line = text.splitlines()[0] if text else type(err).__name__
    match = _NESTED_PREFIX.match(line)
    if match:
        line = line[:line.index(".")] + ": " + line[match.end():]
    return _VERSION.sub("", line)[:limit]


def checked_sql(session: ReadOnlySession, sql: str) -> str:
    """The canonical text of the user's one SELECT, or UserSQLError. See flows/sqlguard.py."""
    try:
        sqlguard.check_text(sql)
        try:
            rows = session.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows
        except Exception as err:  # the parser's message says where it stopped
            raise sqlguard.GuardError("syntax_error", first_line(err)) from None
        canonical = sqlguard.check_canonical(rows[0][0])
        try:
            lines = session.text_lines(f"EXPLAIN AST {canonical}")
        except Exception as err:  # formatted as one statement yet not explainable: not a SELECT
            raise sqlguard.GuardError("not_a_select", first_line(err)) from None
        sqlguard.check_ast(lines, session.database, client_format=EXPLAIN_FORMAT)
    except sqlguard.GuardError as err:
        raise UserSQLError(err.reason, str(err)) from None
    return canonical


def plain(value: Any) -> Any:
    """JSON-friendly values: FixedString bytes as text, addresses without the IPv4-mapped prefix."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\0")
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped:
        return str(value.ipv4_mapped)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity: "nan", "inf", "-inf"
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class _Capped:
    """Rows kept under a row cap and a byte cap on their JSON text."""

    max_rows: int
    max_bytes: int
    rows: list[list[Any]] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    over_bytes: bool = False

    def add(self, block: Iterator[Any]) -> bool:
        """Take rows from one block; False once a cap is reached (stop reading)."""
        for row in block:
            if len(self.rows) >= self.max_rows:
                self.truncated = True
                return False
            values = [plain(v) for v in row]
            self.size += len(json.dumps(values, default=str)) + 1
            if self.size > self.max_bytes:
                self.truncated = self.over_bytes = True
                return False
            self.rows.append(values)
        return True


def sql_result(session: ReadOnlySession, settings: Settings, sql: str) -> dict[str, Any]:
    """A user's read-only SQL, streamed: at most `api.max_rows` rows and `api.max_result` bytes
    of JSON, `truncated` when there was more (the rest is not read)."""
    canonical = checked_sql(session, sql)
    capped = _Capped(settings.api.max_rows, int(settings.api.max_result))
    try:
        with session.blocks(canonical) as stream:
            columns = list(stream.source.column_names)
            for block in stream:
                if not capped.add(block):
                    break
            if capped.over_bytes:
                # The store's own limit (max_result_bytes, throw) decides whether a result is too
                # large, not how far ahead of us it ran: read on, keeping nothing, until it
                # throws or the result ends within the limit.
                for _ in stream:
                    pass
    except Exception as err:  # a limit hit, a missing table, a type error: ClickHouse says which
        raise UserSQLError("query_failed", first_line(err)) from None
    return {"columns": columns, "rows": capped.rows, "truncated": capped.truncated}


def flows_result(session: ReadOnlySession, settings: Settings, query: api.FlowsQuery) -> dict[str, Any]:
    """GET /api/v0/flows for validated parameters: pick the table, run, shape."""
    built = api.build_flows_sql(query, settings.clickhouse.database, ttl_seconds(settings.clickhouse))
    rows = session.query(built.sql, parameters=built.parameters).result_rows
    result = api.shape_flows(built, query, rows)
    result["names"] = _as_names(session, settings, result)
    return result


def _as_names(session: ReadOnlySession, settings: Settings, result: dict[str, Any]) -> dict[str, str]:
    """AS number → name for the AS values of the answer's series (the asns dictionary's rows)."""
    positions = [i for i, name in enumerate(result["dimensions"]) if name in api.AS_COLUMNS]
    numbers = sorted({int(s["dimensions"][i]) for s in result["series"] for i in positions
                      if i < len(s["dimensions"]) and s["dimensions"][i].isdigit()})
    if not numbers:
        return {}
    rows = session.query(f"SELECT toString(asn), name FROM `{settings.clickhouse.database}`.`asns_data` "
                         "WHERE asn IN {numbers:Array(UInt64)} AND name != ''",
                         parameters={"numbers": numbers}).result_rows
    return {number: name for number, name in rows}


def exporters_result(session: ReadOnlySession, settings: Settings) -> list[dict[str, Any]]:
    return api.shape_exporters(session.query(api.exporters_sql(settings.clickhouse.database)).result_rows)


def filter_completions(session: ReadOnlySession, settings: Settings, text: str, cursor: int | None) -> dict[str, Any]:
    """GET /api/v0/filter/complete: what may come at the cursor, values from the store."""
    ctx = filter_assist.context(text, cursor)
    values: list[tuple[str, str]] = []
    if ctx.kind == "value" and ctx.column:
        sql = filter_assist.values_sql(ctx.column, settings.clickhouse.database)
        if sql is not None:
            prefix = ctx.prefix.strip("'\"")
            values = [(str(v), str(d)) for v, d in session.query(sql, parameters={"prefix": prefix}).result_rows]
    return filter_assist.complete(ctx, values)


def graph_result(session: ReadOnlySession, settings: Settings, query: graph.GraphQuery) -> dict[str, Any]:
    """GET /api/v0/graph: the main flows query, and its reverse and previous period if asked."""
    run = [q and flows_result(session, settings, q) for q in (query.main, query.reverse, query.previous)]
    return graph.shape_graph(query, *run)


def flow_rate_result(session: ReadOnlySession, settings: Settings, window: tuple[int, int]) -> dict[str, Any]:
    start, end = window
    row = session.query(widgets.flow_rate_sql(settings.clickhouse.database),
                        parameters={"from": start, "to": end}).result_rows[0]
    return widgets.shape_flow_rate(start, end, row)


def graph_widget_result(session: ReadOnlySession, settings: Settings,
                        queries: tuple[api.FlowsQuery, api.FlowsQuery]) -> dict[str, Any]:
    bps, flows = (flows_result(session, settings, q) for q in queries)
    return widgets.shape_graph(bps, flows)


def top_result(session: ReadOnlySession, settings: Settings, query: api.FlowsQuery) -> dict[str, Any]:
    answer = flows_result(session, settings, query)
    if query.dimensions == ("Proto",):  # protocol numbers with their names (the protocols dictionary)
        numbers = [int(s["dimensions"][0]) for s in answer["series"] if s["dimensions"][0].isdigit()]
        rows = session.query(f"SELECT toString(proto), name FROM `{settings.clickhouse.database}`.`protocols_data` "
                             "WHERE proto IN {numbers:Array(UInt64)}", parameters={"numbers": numbers}).result_rows
        answer["names"] = dict(rows)
    return widgets.shape_top(answer)


def last_flow_result(session: ReadOnlySession, settings: Settings) -> dict[str, Any]:
    answer = session.query(widgets.last_flow_sql(settings.clickhouse.database))
    if not answer.result_rows:
        return {"flow": None}
    return {"flow": {name: plain(value) for name, value in zip(answer.column_names, answer.result_rows[0])}}


def saved_filters_result(session: ReadOnlySession, settings: Settings, name: str | None = None) -> list[dict[str, str]]:
    db = settings.clickhouse.database
    if name is None:
        return saved_filters.shape(session.query(saved_filters.list_sql(db)).result_rows)
    return saved_filters.shape(session.query(saved_filters.one_sql(db), parameters={"name": name}).result_rows)


def alerts_result(session: ReadOnlySession, settings: Settings,
                  query: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    sql, parameters = query
    rows = session.query(sql, parameters={**parameters, "db": settings.clickhouse.database}).result_rows
    return alerts_api.shape_alerts(rows)


def backtest_result(session: ReadOnlySession, settings: Settings, query: tuple[Any, int, int],
                    budget: float | None = None) -> dict[str, Any]:
    from connectors.alerts import BacktestTooLong, backtest

    rule, start, end = query
    try:
        events = backtest(lambda sql, parameters: session.query(sql, parameters=parameters).result_rows, rule,
                          settings.clickhouse.database, start, end, budget=budget)
    except BacktestTooLong as err:
        raise APIError(400, "too_long", str(err)) from None
    return {"rule": rule.name, "threshold": rule.threshold, "from": start, "to": end, "events": events}
