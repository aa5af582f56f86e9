"""The outlet's HTTP endpoint on `api.listen` (+ process id in a multi-process cluster).

For now it serves Prometheus /metrics only; the HTTP API (health, ClickHouse helper files,
flows queries) is to be served from here too, by the outlet process that owns the store.
"""

from __future__ import annotations

from connectors import metrics as metrics_mod
from connectors.cluster import process_id
from flows.settings import Settings


def serve_outlet(settings: Settings) -> None:
    """Start the outlet's HTTP endpoint in the background (idempotent, never fatal)."""
    host, _, port = settings.api.listen.rpartition(":")
    metrics_mod.serve(host, int(port) + process_id())
