"""/healthz: cheap, cached probes that never wait behind users' queries.

The store probe has a session of its own (2 s limit) and a non-blocking lock: while one probe
runs, other callers get the last answer instead of queueing, so any number of unauthenticated
/healthz calls cost at most one store query per second. An answer older than `STALE` seconds
(the probe itself hangs) reads as not ok.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from prometheus_client import REGISTRY

from connectors.http.queries import ReadOnlySession
from flows.settings import Settings

STALE = 5.0
REUSE = 1.0


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


def broker_answers(settings: Settings) -> bool:
    from connectors.broker import answers

    return any(answers(b, timeout=1.0) for b in settings.kafka.brokers)


def counter_total(name: str) -> float:
    return float(REGISTRY.get_sample_value(name) or 0.0)


def store_components(session: ReadOnlySession) -> dict[str, Any]:
    """The store answers, and how old its newest flow is."""
    newest = session.query(f"SELECT toUInt32(max(TimeReceived)) FROM `{session.database}`.`flows` "
                           "WHERE TimeReceived > now() - INTERVAL 1 DAY").result_rows
    stamp = newest[0][0] if newest else 0
    return {"store": {"ok": True},
            "last_insert": {"ok": True, "newest_flow_age_seconds": round(time.time() - stamp, 1) if stamp else None,
                            "rows_inserted": counter_total("waxflow_clickhouse_rows_total")}}


class StoreProbe:
    """The store's part of /healthz, on a probe session of its own."""

    def __init__(self, factory: Callable[[], ReadOnlySession]) -> None:
        self._factory = factory
        self._session: ReadOnlySession | None = None
        self._lock = threading.Lock()
        self._answer: dict[str, Any] = {"store": {"ok": False, "error": "not probed yet"}}
        self._at = -STALE - 1.0

    def __call__(self) -> dict[str, Any]:
        if time.monotonic() - self._at >= REUSE and self._lock.acquire(blocking=False):
            try:
                self._answer, self._at = self._probe(), time.monotonic()
            finally:
                self._lock.release()
        if time.monotonic() - self._at > STALE:
            return {"store": {"ok": False, "error": f"the store has not answered a probe for {STALE:.0f}s"}}
        return self._answer

    def _probe(self) -> dict[str, Any]:
        try:
            if self._session is None:
                self._session = self._factory()
            return store_components(self._session)
        except Exception as err:  # the store's own message says why
            if self._session is not None:
                self._session.close()
                self._session = None
            text = str(err).strip()
            return {"store": {"ok": False, "error": (text.splitlines()[0] if text else type(err).__name__)[:300]}}
