"""The outlet's HTTP API on `api.listen` (+ process id in a multi-process cluster).

Served from a background thread of the outlet process, because with the embedded chDB store
that process is the only one allowed to open the data directory:

    /metrics                         Prometheus metrics of the outlet
    /healthz                         per component: store, Kafka, last insert
    /api/v0/clickhouse/init.sh       what a ClickHouse server runs to build the dictionaries
    /api/v0/clickhouse/protocols.csv, asns.csv   the dictionaries' content
    /api/v0/flows                    time series + top-N (flows/api.py builds the SQL)
    /api/v0/exporters                exporters and interfaces seen
    /api/v0/query                    read-only SQL (GET ?sql= or POST body)

Werkzeug does the HTTP (routing, request parsing, body limits) in a threading server: the API is
a low-rate operator endpoint, its threads sleep in socket and chDB calls (which release the GIL),
and it needs no event loop beside Bytewax's. Queries use their own chDB client handle (so they
never share a session with the sink's inserts), one at a time, read-only, with a time limit.
"""

from __future__ import annotations

import csv
import hmac
import ipaddress
import io
import json
import logging
import threading
import time
import traceback
from typing import Any, Callable
from urllib.parse import urlencode

import clickhouse_connect
from prometheus_client import REGISTRY, CONTENT_TYPE_LATEST, Counter, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from connectors.clickhouse import lookup_rows, ttl_seconds
from connectors.cluster import process_id
from connectors.metrics import RateLimitedLog
from flows import api, ddl
from flows.settings import Settings, split_host_port

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)

MAX_BODY = 64 * 1024
# Public data a ClickHouse server's init script fetches (Akvorado serves them without auth too).
PUBLIC = frozenset({"init_sh", "dictionary"})
QUERY_WAIT = 30.0  # seconds a request waits for the query slot before answering 503

REQUESTS = Counter("waxflow_api_requests_total", "HTTP API requests by endpoint and status class",
                   ["endpoint", "status"])
ERRORS = Counter("waxflow_api_errors_total", "HTTP API requests refused or failed, by reason", ["reason"])


class APIError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


# --- running queries (also used by the CLI straight on a stopped store) ------------------------

def query_settings(settings: Settings) -> dict[str, Any]:
    """Limits for every API query; `readonly` last, since it forbids changing settings after it."""
    return {"max_execution_time": int(settings.api.query_timeout.total_seconds()),
            "max_memory_usage": int(settings.api.max_memory), "readonly": 1}


def user_query_settings(settings: Settings) -> dict[str, Any]:
    """Also a cap on the result's size for SQL from users (rows are capped by a LIMIT)."""
    return {"max_result_bytes": int(settings.api.max_result), "result_overflow_mode": "throw",
            **query_settings(settings)}


def query_client(settings: Settings) -> Any:
    """A client of its own for API queries (never the sink's session): as `api.dsn`'s read-only
    user on a ClickHouse server when set, else as `clickhouse.dsn`."""
    return clickhouse_connect.get_client(dsn=settings.api.dsn or settings.clickhouse.dsn)


def flows_result(client: Any, settings: Settings, query: api.FlowsQuery) -> dict[str, Any]:
    """GET /api/v0/flows for validated parameters: pick the table, run, shape."""
    built = api.build_flows_sql(query, settings.clickhouse.database, ttl_seconds(settings.clickhouse))
    rows = client.query(built.sql, parameters=built.parameters, settings=query_settings(settings)).result_rows
    return api.shape_flows(built, query, rows)


def exporters_result(client: Any, settings: Settings) -> list[dict[str, Any]]:
    rows = client.query(api.exporters_sql(settings.clickhouse.database),
                        settings=query_settings(settings)).result_rows
    return api.shape_exporters(rows)


def _plain(value: Any) -> Any:
    """JSON-friendly values: FixedString bytes as text, addresses without the IPv4-mapped prefix."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\0")
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped:
        return str(value.ipv4_mapped)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def guarded_sql(client: Any, settings: Settings, sql: str) -> str:
    """The user's SQL wrapped so it can only be one SELECT, checked by the store's own parser
    (QueryError if it is anything else); see flows/api.py."""
    wrapped = api.wrap_user_sql(sql)
    # Without settings: chDB's client writes them into the text as a SETTINGS clause, which
    # would show in the tree. EXPLAIN AST only parses.
    lines = client.query(f"EXPLAIN AST {wrapped}").result_rows
    api.check_user_ast([line[0] for line in lines])
    return wrapped


def sql_result(client: Any, settings: Settings, sql: str) -> dict[str, Any]:
    """A user's read-only SQL: at most `api.max_rows` rows, `truncated` when there were more."""
    cap = settings.api.max_rows
    result = client.query(f"{guarded_sql(client, settings, sql)}\nLIMIT {cap + 1}",
                          settings=user_query_settings(settings))
    rows = result.result_rows
    return {"columns": list(result.column_names), "rows": [[_plain(v) for v in row] for row in rows[:cap]],
            "truncated": len(rows) > cap}


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


# --- health ------------------------------------------------------------------------------------

def _broker_answers(settings: Settings) -> bool:
    from connectors.broker import answers

    return any(answers(b, timeout=1.0) for b in settings.kafka.brokers)


def _counter_total(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return float(value or 0.0)


def store_health(client: Any, settings: Settings) -> dict[str, Any]:
    """The store's components: it answers, and how old its newest flow is."""
    components: dict[str, Any] = {}
    try:
        client.query("SELECT 1", settings=query_settings(settings))
        newest = client.query(
            f"SELECT toUInt32(max(TimeReceived)) FROM `{settings.clickhouse.database}`.`flows` "
            "WHERE TimeReceived > now() - INTERVAL 1 DAY", settings=query_settings(settings)).result_rows
        stamp = newest[0][0] if newest else 0
        components["store"] = {"ok": True}
        components["last_insert"] = {"ok": True, "newest_flow_age_seconds": round(time.time() - stamp, 1)
                                     if stamp else None,
                                     "rows_inserted": _counter_total("waxflow_clickhouse_rows_total")}
    except Exception as err:  # the store's own message says why
        components["store"] = {"ok": False, "error": str(err).splitlines()[0][:300]}
    return components


class CachedProbe:
    """A slow yes/no check (a new Kafka admin client each time) run at most every `ttl` seconds,
    so unauthenticated /healthz calls cannot make it run in a loop."""

    def __init__(self, check: Callable[[], bool], ttl: float = 5.0) -> None:
        self.check, self.ttl = check, ttl
        self._lock = threading.Lock()
        self._at, self._value = -ttl, False

    def __call__(self) -> bool:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value, self._at = self.check(), time.monotonic()
            return self._value


# --- the WSGI application ----------------------------------------------------------------------

def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body, default=str), status=status, mimetype="application/json")


class API:
    """The WSGI application; `client_factory` gives the store client (created on first use)."""

    def __init__(self, settings: Settings, client_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self._factory = client_factory or (lambda: query_client(settings))
        self._client: Any = None
        self._slot = threading.Lock()
        self._kafka_ok = CachedProbe(lambda: _broker_answers(settings))
        self.urls = Map([
            Rule("/metrics", endpoint="metrics"),
            Rule("/healthz", endpoint="healthz"),
            Rule("/api/v0/clickhouse/init.sh", endpoint="init_sh"),
            Rule("/api/v0/clickhouse/<any(protocols, asns):name>.csv", endpoint="dictionary"),
            Rule("/api/v0/flows", endpoint="flows", methods=["GET"]),
            Rule("/api/v0/exporters", endpoint="exporters", methods=["GET"]),
            Rule("/api/v0/query", endpoint="query", methods=["GET", "POST"]),
        ])

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
            response = self._error(400, err.reason, str(err))
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

    def _error(self, status: int, reason: str, message: str) -> Response:
        ERRORS.labels(reason).inc()
        return _json(status, {"error": message, "reason": reason})

    def _authorize(self, request: Request) -> None:
        token = self.settings.api.token
        if not token:
            return
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise APIError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer ...)")

    def _store(self, work: Callable[[Any], Any], user_sql: bool = False) -> Any:
        """Run `work(client)` in the single query slot. A failure is the user's (400) for their own
        SQL, else the store's (503)."""
        if self.settings.clickhouse.embedded and process_id() != 0:
            raise APIError(503, "store_unavailable", "the embedded store is served by process 0's API")
        if not self._slot.acquire(timeout=QUERY_WAIT):
            raise APIError(503, "busy", "another query is running; try again")
        try:
            if self._client is None:
                self._client = self._factory()
            return work(self._client)
        except (api.QueryError, APIError):
            raise
        except Exception as err:  # ClickHouse's message names what is wrong
            # After a query stopped by a limit, chDB's handle can still hold the rest of its
            # stream and hand it to the next query: start the next one on a fresh handle.
            self._drop_client()
            status, reason = (400, "query_failed") if user_sql else (503, "store_unavailable")
            raise APIError(status, reason, str(err).splitlines()[0][:500]) from None
        finally:
            self._slot.release()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                client.close()
        except Exception:  # a handle in a bad state: closing is best effort
            pass

    # -- endpoints -----------------------------------------------------------------------------
    def on_metrics(self, request: Request) -> Response:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)

    def on_healthz(self, request: Request) -> Response:
        try:
            components = self._store(lambda client: store_health(client, self.settings))
        except APIError as err:  # busy, or served by another process
            components = {"store": {"ok": False, "error": str(err)}}
        kafka_ok = self._kafka_ok()  # outside the query slot
        components["kafka"] = {"ok": kafka_ok, "messages_read": _counter_total("waxflow_outlet_messages_total")}
        ok = components["store"]["ok"] and kafka_ok
        return _json(200 if ok else 503, {"ok": ok, "components": components})

    def on_init_sh(self, request: Request) -> Response:
        return Response(init_script(self.settings, request.host_url.rstrip("/")), mimetype="text/x-shellscript")

    def on_dictionary(self, request: Request, name: str) -> Response:
        return Response(dictionary_csv(name, self.settings), mimetype="text/csv")

    def on_flows(self, request: Request) -> Response:
        params = {key: request.args.get(key, "") for key in request.args}
        if any(len(request.args.getlist(key)) > 1 for key in request.args):
            raise APIError(400, "bad_request", "each parameter may be given once")
        query = api.parse_flows_query(params)  # validated before waiting for the query slot
        return _json(200, self._store(lambda client: flows_result(client, self.settings, query)))

    def on_exporters(self, request: Request) -> Response:
        return _json(200, {"exporters": self._store(lambda client: exporters_result(client, self.settings))})

    def on_query(self, request: Request) -> Response:
        sql = request.args.get("sql", "") if request.method == "GET" else _body_sql(request)
        if not sql.strip():
            raise APIError(400, "bad_request", "no SQL given (GET ?sql=..., or POST the text or {\"sql\": ...})")
        return _json(200, self._store(lambda client: sql_result(client, self.settings, sql), user_sql=True))


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

_servers: dict[tuple[str, int], Any] = {}
_servers_lock = threading.Lock()


def listen_address(settings: Settings) -> tuple[str, int]:
    host, port = split_host_port(settings.api.listen)
    return host, port + process_id()


def serve_outlet(settings: Settings) -> bool:
    """Start the outlet's HTTP API in a background thread (idempotent, never fatal: a taken port is
    an error line, not a dead collector). Returns whether it is serving."""
    address = listen_address(settings)
    with _servers_lock:
        if address in _servers:
            return True
        try:
            server = make_server(*address, API(settings), threaded=True)
        except (OSError, SystemExit) as err:
            log.error("api: cannot listen on %s:%d: %s; no API or /metrics from this process",
                      *address, getattr(err, "strerror", err))
            return False
        server.daemon_threads = True
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        threading.Thread(target=server.serve_forever, name="waxflow-api", daemon=True).start()
        _servers[address] = server
    log.info("api: serving http://%s:%d/ (/metrics, /healthz, /api/v0/...)", *address)
    return True


# --- the client side: `waxflow top|query` and `waxflow up` talk to a running outlet -------------

class APIUnavailable(Exception):
    """No API answers at the configured address (the stack is not running)."""


def api_base(settings: Settings) -> str:
    host, port = listen_address(settings)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def call_api(settings: Settings, path: str, params: dict[str, str] | None = None,
             body: bytes | None = None, timeout: float = 60.0) -> Any:
    """GET (or POST `body`) an API path; the JSON answer, APIError for a refusal,
    APIUnavailable when nothing listens."""
    import urllib.error
    import urllib.request

    url = api_base(settings) + path + (f"?{urlencode(params)}" if params else "")
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if settings.api.token:
        request.add_header("Authorization", f"Bearer {settings.api.token}")
    if body is not None:
        request.add_header("Content-Type", "text/plain")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read())
        except ValueError:
            detail = {"reason": "bad_request", "error": err.reason}
        raise APIError(err.code, detail.get("reason", "error"), detail.get("error", "")) from None
    except (urllib.error.URLError, ConnectionError) as err:
        raise APIUnavailable(f"no API at {url}: {err}") from None
