"""The outlet's HTTP API on `api.listen` (+ process id in a multi-process cluster).

Served from background threads of the outlet process, because with the embedded chDB store
that process is the only one allowed to open the data directory:

    /metrics                         Prometheus metrics of the outlet
    /healthz                         per component: store, Kafka, last insert
    /api/v0/clickhouse/init.sh       what a ClickHouse server runs to build the dictionaries
    /api/v0/clickhouse/protocols.csv, asns.csv   the dictionaries' content
    /api/v0/flows                    time series + top-N (flows/api.py builds the SQL)
    /api/v0/exporters                exporters and interfaces seen
    /api/v0/query                    one read-only SELECT (GET ?sql= or POST body)
    /, /console/<file>               the web console (console/, built into ./console)
    /api/v0/columns                  the dimensions and filter columns
    /api/v0/filter/validate          is a filter valid; else why, and where (?filter=)
    /api/v0/filter/complete          what may come at the cursor (?filter=&cursor=), values from the store
    /api/v0/graph                    series or sankey, with reverse direction and previous period (flows/graph.py)
    /api/v0/widgets/flow-rate, graph, top/<dimension>, last-flow    the console's home (flows/widgets.py)
    /api/v0/alerts                   alert events (the alerts table), by time, rule, still on
    /api/v0/alerts/backtest          when a rule would have fired over stored flows (?rule=&from=&to=&threshold=)
    /api/v0/filters[/<name>]         saved filters: GET lists/reads; POST saves, DELETE removes (the API's
                                     only write, one validated row into saved_filters: saved_filters.py)

Werkzeug does the HTTP (routing, request parsing, body limits) in a threading server: the API is
a low-rate operator endpoint whose threads sleep in socket and chDB calls (which release the
GIL). Isolation, so that no caller can starve the rest:
- at most `api.max_connections` connections are served at once; one more is answered 503 at once;
  a connection that sends nothing for 15 s is dropped;
- queries run in a bounded pool of read-only sessions (queries.py): `api.query_slots` at once, a
  request waits at most `api.queue_wait` for one, each query is limited in time, memory and size;
- /metrics needs no store, /healthz uses its own probe session (health.py): neither ever waits for
  a query slot.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import logging
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from connectors.clickhouse import lookup_rows
from connectors.cluster import process_id
from connectors.http import queries
from connectors.http.client import listen_address
from connectors.http.errors import APIError
from connectors.http.health import counter_total, insert_component, kafka_probe, store_probe
from connectors.http.queries import (
    QueryPool,
    ReadOnlySession,
    exporters_result,
    filter_completions,
    first_line,
    flows_result,
    sql_result,
)
from connectors.http.saved_filters import SavedFilterWriter
from flows import alerts_api, api, ddl, filter_assist, graph, saved_filters, widgets
from flows.ratelimit import RateLimitedLog
from flows.settings import Settings

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)

MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 15.0  # seconds a connection may send nothing before it is dropped
# Public data a ClickHouse server's init script fetches (Akvorado serves them without auth too).
PUBLIC = frozenset({"init_sh", "dictionary"})
CONSOLE_DIR = Path(__file__).resolve().parent / "console"  # built by console/ (scripts/bootstrap.sh)
CONSOLE_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".txt": "text/plain"}

REQUESTS = Counter("waxflow_api_requests_total", "HTTP API requests by endpoint and status class",
                   ["endpoint", "status"])
ERRORS = Counter("waxflow_api_errors_total", "HTTP API requests refused or failed, by reason", ["reason"])
CONNECTIONS = Gauge("waxflow_api_connections", "HTTP connections being served")
REFUSED = Counter("waxflow_api_connections_refused_total",
                  "HTTP connections answered 503 at once because api.max_connections were in use")


def dictionary_csv(name: str, settings: Settings) -> str:
    spec = next(d for d in ddl.DICTIONARIES if d.name == name)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([column for column, _ in spec.columns])
    writer.writerows(lookup_rows(name, settings.clickhouse))
    return out.getvalue()


def init_script(settings: Settings, base_url: str) -> str:
    """A shell script for a ClickHouse server (e.g. /docker-entrypoint-initdb.d/): fetch the
    dictionaries' content from this API (public: no token needed) and create the tables and
    dictionaries over it. Each file is downloaded before loading, so a failed fetch stops it."""
    db = settings.clickhouse.database
    statements = [f"CREATE DATABASE IF NOT EXISTS `{db}`;"]
    loads = []
    for spec in ddl.DICTIONARIES:
        statements += [spec.table_sql(db) + ";", f"TRUNCATE TABLE `{db}`.`{spec.table}`;"]
        loads += [f'curl -fsS "$WAXFLOW_API/api/v0/clickhouse/{spec.name}.csv" -o "$tmp/{spec.name}.csv"',
                  f'clickhouse client --query "INSERT INTO {db}.{spec.table} FORMAT CSVWithNames" '
                  f'< "$tmp/{spec.name}.csv"']
    dictionaries = [spec.dictionary_sql(db) + ";" for spec in ddl.DICTIONARIES]
    lines = ["#!/bin/sh", "# Generated by waxflow: the lookup dictionaries for a ClickHouse server.", "set -e",
             f'WAXFLOW_API="${{WAXFLOW_API:-{base_url}}}"',
             'tmp="$(mktemp -d)"', "trap 'rm -rf \"$tmp\"' EXIT",
             "clickhouse client --multiquery <<'SQL'", *statements, "SQL", *loads,
             "clickhouse client --multiquery <<'SQL'", *dictionaries, "SQL"]
    return "\n".join(lines) + "\n"


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body, default=str), status=status, mimetype="application/json")


class API:
    """The WSGI application. `session_factory(kind)` opens a read-only store session."""

    def __init__(self, settings: Settings,
                 session_factory: Callable[[str], ReadOnlySession] | None = None) -> None:
        self.settings = settings
        factory = session_factory or (lambda kind: ReadOnlySession(settings, kind))
        wait = settings.api.queue_wait.total_seconds()
        self._pools = {kind: QueryPool(settings.api.query_slots, wait, lambda kind=kind: factory(kind))
                       for kind in ("api", "user")}
        self._store_probe = store_probe(lambda: factory("probe"))
        self._kafka_ok = kafka_probe(settings)
        self.urls = Map([
            Rule("/", endpoint="console"),
            Rule("/console/<name>", endpoint="console_file"),
            Rule("/metrics", endpoint="metrics"),
            Rule("/healthz", endpoint="healthz"),
            Rule("/api/v0/clickhouse/init.sh", endpoint="init_sh"),
            Rule("/api/v0/clickhouse/<any(protocols, asns):name>.csv", endpoint="dictionary"),
            Rule("/api/v0/flows", endpoint="flows", methods=["GET"]),
            Rule("/api/v0/exporters", endpoint="exporters", methods=["GET"]),
            Rule("/api/v0/query", endpoint="query", methods=["GET", "POST"]),
            Rule("/api/v0/columns", endpoint="columns", methods=["GET"]),
            Rule("/api/v0/filter/validate", endpoint="filter_validate", methods=["GET"]),
            Rule("/api/v0/filter/complete", endpoint="filter_complete", methods=["GET"]),
            Rule("/api/v0/graph", endpoint="graph", methods=["GET"]),
            Rule("/api/v0/widgets/flow-rate", endpoint="widget_flow_rate", methods=["GET"]),
            Rule("/api/v0/widgets/graph", endpoint="widget_graph", methods=["GET"]),
            Rule("/api/v0/widgets/top/<dimension>", endpoint="widget_top", methods=["GET"]),
            Rule("/api/v0/widgets/last-flow", endpoint="widget_last_flow", methods=["GET"]),
            Rule("/api/v0/alerts", endpoint="alerts", methods=["GET"]),
            Rule("/api/v0/alerts/backtest", endpoint="alerts_backtest", methods=["GET"]),
            Rule("/api/v0/filters", endpoint="saved_filters", methods=["GET", "POST"]),
            Rule("/api/v0/filters/<name>", endpoint="saved_filter", methods=["GET", "DELETE"]),
        ])
        self._writer = SavedFilterWriter(settings)

    # -- plumbing ------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_BODY
        endpoint = "unknown"
        try:
            endpoint, args = self.urls.bind_to_environ(environ).match()
            if request.path.startswith("/api/") and endpoint not in PUBLIC:
                self._authorize(request)
            response = getattr(self, f"on_{endpoint}")(request, **args)
        except api.QueryError as err:
            response = self._error(400, err.reason, str(err), err.position)
        except APIError as err:
            response = self._error(err.status, err.reason, str(err))
        except HTTPException as err:
            reason = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(err.code or 0,
                                                                                        "bad_request")
            response = self._error(err.code or 400, reason, err.description or reason)
        except Exception:  # a bug: counted, logged (rate-limited), JSON like every other error
            _ratelimited(logging.ERROR, f"internal:{endpoint}", "api: %s failed: %s", endpoint,
                         traceback.format_exc())
            response = self._error(500, "internal", "internal error; see the outlet's log")
        REQUESTS.labels(endpoint, f"{response.status_code // 100}xx").inc()
        return response(environ, start_response)

    def _error(self, status: int, reason: str, message: str, position: int | None = None) -> Response:
        ERRORS.labels(reason).inc()
        body: dict[str, Any] = {"error": message, "reason": reason}
        if position is not None:  # a filter's error: where it is
            body["position"] = position
        return _json(status, body)

    def _authorize(self, request: Request) -> None:
        token = self.settings.api.token  # never empty: flows/settings.py refuses that
        if token is None:
            return
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode()):
            raise APIError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer ...)")

    def _store(self, kind: str, work: Callable[[ReadOnlySession], Any]) -> Any:
        """Run `work(session)` on a pooled read-only session. The user's own SQL fails as 400
        (UserSQLError, raised inside); anything else from the store is 503."""
        if self.settings.clickhouse.embedded and process_id() != 0:
            raise APIError(503, "store_unavailable", "the embedded store is served by process 0's API")
        try:
            return self._pools[kind].run(work)
        except (api.QueryError, APIError):
            raise
        except Exception as err:  # ClickHouse's message names what is wrong
            raise APIError(503, "store_unavailable", first_line(err)) from None

    # -- endpoints -----------------------------------------------------------------------------
    def on_metrics(self, request: Request) -> Response:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)

    def on_healthz(self, request: Request) -> Response:
        if self.settings.clickhouse.embedded and process_id() != 0:
            components: dict[str, Any] = {"store": {"ok": True, "served_by": "process 0"}}
        else:
            components = dict(self._store_probe())
        components["last_insert"] = insert_component(self.settings, components)
        kafka_ok = self._kafka_ok()
        components["kafka"] = {"ok": kafka_ok, "messages_read": counter_total("waxflow_outlet_messages_total")}
        ok = components["store"]["ok"] and kafka_ok and components["last_insert"]["ok"]
        return _json(200 if ok else 503, {"ok": ok, "components": components})

    def on_init_sh(self, request: Request) -> Response:
        return Response(init_script(self.settings, request.host_url.rstrip("/")), mimetype="text/x-shellscript")

    def on_dictionary(self, request: Request, name: str) -> Response:
        return Response(dictionary_csv(name, self.settings), mimetype="text/csv")

    def on_flows(self, request: Request) -> Response:
        query = api.parse_flows_query(_params(request))
        return _json(200, self._store("api", lambda session: flows_result(session, self.settings, query)))

    def on_graph(self, request: Request) -> Response:
        query = graph.parse_graph_query(_params(request))
        return _json(200, self._store("api", lambda session: queries.graph_result(session, self.settings, query)))

    def on_widget_flow_rate(self, request: Request) -> Response:
        window = widgets.flow_rate_window(_params(request))
        return _json(200, self._store("api", lambda session: queries.flow_rate_result(session, self.settings, window)))

    def on_widget_graph(self, request: Request) -> Response:
        pair = widgets.graph_queries(_params(request))
        return _json(200, self._store("api", lambda session: queries.graph_widget_result(session, self.settings, pair)))

    def on_widget_top(self, request: Request, dimension: str) -> Response:
        query = widgets.top_query(dimension, _params(request))
        return _json(200, self._store("api", lambda session: queries.top_result(session, self.settings, query)))

    def on_widget_last_flow(self, request: Request) -> Response:
        _params(request, allowed=set())
        return _json(200, self._store("api", lambda session: queries.last_flow_result(session, self.settings)))

    def on_alerts(self, request: Request) -> Response:
        query = alerts_api.alerts_query(_params(request))
        found = self._store("api", lambda session: queries.alerts_result(session, self.settings, query))
        return _json(200, {"alerts": found})

    def on_alerts_backtest(self, request: Request) -> Response:
        rules = {r.name: r.rule() for r in self.settings.alerts.all_rules()}
        query = alerts_api.backtest_query(_params(request), rules)
        budget = self.settings.api.query_timeout.total_seconds()  # a slot is held no longer than one query's limit
        return _json(200, self._store("api", lambda session: queries.backtest_result(session, self.settings, query,
                                                                                     budget)))

    def _saved_names(self) -> list[str]:
        return [f["name"] for f in self._store("api", lambda s: queries.saved_filters_result(s, self.settings))]

    def on_saved_filters(self, request: Request) -> Response:
        if request.method == "POST":
            saved = saved_filters.parse_saved(_body_json(request))
            self._writer.write(saved, self._saved_names)
            return _json(201, {"saved": saved.name})
        _params(request, allowed=set())
        listed = self._store("api", lambda session: queries.saved_filters_result(session, self.settings))
        return _json(200, {"filters": listed, "writable": self.settings.api.saved_filters})

    def on_saved_filter(self, request: Request, name: str) -> Response:
        saved_filters.check_name(name)
        if request.method == "DELETE":
            self._writer.write(saved_filters.SavedFilter(name, ""), self._saved_names, deleted=True)
            return _json(200, {"deleted": name})
        found = self._store("api", lambda session: queries.saved_filters_result(session, self.settings, name))
        if not found:
            raise APIError(404, "not_found", f"no saved filter {name!r}")
        return _json(200, found[0])

    def on_exporters(self, request: Request) -> Response:
        return _json(200, {"exporters": self._store("api", lambda session: exporters_result(session, self.settings))})

    def on_console(self, request: Request) -> Response:
        return self.on_console_file(request, "index.html")

    def on_console_file(self, request: Request, name: str) -> Response:
        """The console's built files (no token: they hold no data; the API calls they make do)."""
        path = CONSOLE_DIR / name
        if name not in _console_files():
            if not (CONSOLE_DIR / "index.html").exists():
                raise APIError(503, "console_not_built", "the console is not built: run scripts/bootstrap.sh "
                                                         "(it builds console/ with npm)")
            raise APIError(404, "not_found", f"no console file {name!r}")
        response = Response(path.read_bytes(), mimetype=CONSOLE_TYPES[path.suffix])
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def on_columns(self, request: Request) -> Response:
        return _json(200, {"dimensions": [{"name": c.name, "description": c.description, "aggregated": c.aggregated,
                                           "kind": api.column_kind(c.name)} for c in api.COLUMNS.values()]})

    def on_filter_validate(self, request: Request) -> Response:
        return _json(200, filter_assist.validate(_single(request, "filter", api.MAX_FILTER_LENGTH)))

    def on_filter_complete(self, request: Request) -> Response:
        text = _single(request, "filter", api.MAX_FILTER_LENGTH)
        cursor = request.args.get("cursor")
        if len(request.args.getlist("cursor")) > 1:
            raise APIError(400, "bad_request", "cursor may be given once")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 6
                                       and int(cursor) <= len(text)):
            raise APIError(400, "bad_request", f"cursor is a character offset from 0 to {len(text)}")
        position = None if cursor is None else int(cursor)
        return _json(200, self._store("api", lambda session: filter_completions(session, self.settings, text,
                                                                                position)))

    def on_query(self, request: Request) -> Response:
        sql = request.args.get("sql", "") if request.method == "GET" else _body_sql(request)
        if not sql.strip():
            raise APIError(400, "bad_request", "no SQL given (GET ?sql=..., or POST the text or {\"sql\": ...})")
        result = self._store("user", lambda session: sql_result(session, self.settings, sql))
        # Encoded row by row while it is sent: one json.dumps of a 64 MiB answer would hold the
        # GIL for a second, and /healthz, /metrics and the dataflow would all wait for it.
        return Response(_json_chunks(result), status=200, mimetype="application/json")


def _console_files() -> set[str]:
    """The files the console's build wrote (only these are served: no path reaches elsewhere)."""
    if not CONSOLE_DIR.is_dir():
        return set()
    return {p.name for p in CONSOLE_DIR.iterdir() if p.is_file() and p.suffix in CONSOLE_TYPES}


def _params(request: Request, allowed: set[str] | None = None) -> dict[str, str]:
    """The query string as one value per key (a repeated key is refused, not guessed at)."""
    if any(len(request.args.getlist(key)) > 1 for key in request.args):
        raise APIError(400, "bad_request", "each parameter may be given once")
    if allowed is not None and set(request.args) - allowed:
        unknown = ", ".join(sorted(set(request.args) - allowed))[:200]
        raise APIError(400, "unknown_parameter", f"unknown parameter(s): {unknown}")
    return {key: request.args.get(key, "") for key in request.args}


def _body_json(request: Request) -> Any:
    if request.mimetype != "application/json":
        raise APIError(415, "unsupported_media_type", "send the body as application/json")
    try:
        return json.loads(request.get_data(cache=False).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise APIError(400, "bad_json", "the body is not JSON") from None


def _single(request: Request, name: str, longest: int) -> str:
    """A parameter given at most once and at most `longest` characters (empty when absent)."""
    if len(request.args.getlist(name)) > 1 or set(request.args) - {name, "cursor"}:
        raise APIError(400, "bad_request", f"only {name} (and cursor) may be given, each once")
    value = request.args.get(name, "")
    if len(value) > longest:
        raise APIError(400, "bad_request", f"{name} is longer than {longest} characters")
    return value


def _json_chunks(result: dict[str, Any]) -> Iterator[str]:
    yield '{"columns": ' + json.dumps(result["columns"]) + ', "truncated": ' + json.dumps(result["truncated"])
    yield ', "rows": ['
    for index, row in enumerate(result["rows"]):
        yield ("," if index else "") + json.dumps(row, default=str)
    yield "]}"


def _body_sql(request: Request) -> str:
    data = request.get_data(as_text=True)
    if request.mimetype == "application/json":
        try:
            body = json.loads(data)
        except json.JSONDecodeError:
            raise APIError(400, "bad_request", "the body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise APIError(400, "bad_request", 'the JSON body must be {"sql": "SELECT ..."}')
        return body["sql"]
    return data


# --- serving -----------------------------------------------------------------------------------

class _Handler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # socketserver applies it to the connection: a silent client is dropped

    def log_request(self, *args: Any) -> None:  # no line per request: /metrics counts them
        pass

    # http.server answers what never reaches the application (a request line over 64 KiB,
    # malformed headers) with an HTML page: JSON with a reason instead, like every other error.
    error_content_type = "application/json"
    error_message_format = '{"error": "%(message)s", "reason": "bad_request", "status": %(code)d}'

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The message may quote the request's own text: keep it a valid JSON string.
        safe = "".join(c if c.isprintable() and c not in '"\\' else "'" for c in (message or ""))
        super().send_error(code, safe or None, explain)


def _busy_answer() -> bytes:
    body = json.dumps({"error": "too many connections; try again shortly", "reason": "overloaded"}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


_BUSY = _busy_answer()


class BoundedServer(ThreadedWSGIServer):
    """A thread per connection, at most `limit` at once; one more is answered 503 and closed."""

    daemon_threads = True

    def __init__(self, host: str, port: int, app: Any, limit: int) -> None:
        super().__init__(host, port, app, handler=_Handler)
        self._free = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._free.acquire(blocking=False):
            REFUSED.inc()
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._free.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        CONNECTIONS.inc()
        try:
            super().process_request_thread(request, client_address)
        finally:
            CONNECTIONS.dec()
            self._free.release()


_servers: dict[tuple[str, int], Any] = {}
_servers_lock = threading.Lock()


def serve_outlet(settings: Settings) -> bool:
    """Start the outlet's HTTP API in a background thread (idempotent, never fatal: a taken port is
    an error line, not a dead collector). Returns whether it is serving."""
    address = listen_address(settings)
    with _servers_lock:
        if address in _servers:
            return True
        try:
            server = BoundedServer(*address, API(settings), settings.api.max_connections)
        except (OSError, SystemExit, socket.gaierror) as err:
            log.error("api: cannot listen on %s:%d: %s; no API or /metrics from this process",
                      *address, getattr(err, "strerror", err))
            return False
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        threading.Thread(target=server.serve_forever, name="waxflow-api", daemon=True).start()
        _servers[address] = server
    log.info("api: serving http://%s:%d/ (/metrics, /healthz, /api/v0/...)", *address)
    return True
