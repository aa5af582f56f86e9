"""The outlet's HTTP API: server.py serves it, queries.py runs read-only store sessions and the
queries, health.py the /healthz probes, client.py is what the CLI and `waxflow up` call it with."""

from connectors.http.client import APIUnavailable, api_base, call_api, listen_address
from connectors.http.errors import APIError
from connectors.http.queries import (
                                     QueryPool,
                                     ReadOnlySession,
                                     UserSQLError,
                                     checked_sql,
                                     exporters_result,
                                     flows_result,
                                     query_client,
                                     session_limits,
                                     sql_result,
)
from connectors.http.server import API, serve_outlet

__all__ = ["API", "APIError", "APIUnavailable", "QueryPool", "ReadOnlySession", "UserSQLError", "api_base",
           "call_api", "checked_sql", "exporters_result", "flows_result", "listen_address", "query_client",
           "serve_outlet", "session_limits", "sql_result"]
