"""/healthz: probes that run in the background and never wait behind users' queries.

Each probe (the store, on a session of its own with a 2 s limit; Kafka, with a new admin client)
runs in a thread of its own at most every few seconds, and /healthz answers at once with the
last result: any number of unauthenticated calls cost at most one probe per period, and a
store busy with a heavy query cannot slow /healthz down. A store answer older than `STALE`
seconds (the probe hangs) reads as not ok.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY

from connectors.http.queries import ReadOnlySession, first_line
from flows.settings import Settings

STALE = 5.0
REUSE = 1.0


class BackgroundProbe:
    """A check run in a thread of its own at most every `every` seconds; callers get its last
    answer at once (the very first call waits up to `first_wait` for one). An answer older than
    `stale` seconds (the check hangs) is replaced by `stale_answer()`."""

    def __init__(self, check: Callable[[], Any], every: float, stale: float,
                 stale_answer: Callable[[float], Any], first_wait: float = 3.0) -> None:
        self.check, self.every, self.stale = check, every, stale
        self._stale_answer, self._first_wait = stale_answer, first_wait
        self._lock = threading.Lock()
        self._running = False
        self._done = threading.Event()
        self._answer: Any = None
        self._at = float("-inf")

    def __call__(self) -> Any:
        with self._lock:
            due = not self._running and time.monotonic() - self._at >= self.every
            if due:
                self._running = True
        if due:
            threading.Thread(target=self._run, name="waxflow-probe", daemon=True).start()
        if self._at == float("-inf"):
            self._done.wait(self._first_wait)
        age = time.monotonic() - self._at
        return self._answer if age <= self.stale else self._stale_answer(age)

    def _run(self) -> None:
        try:
            answer = self.check()
            self._answer, self._at = answer, time.monotonic()
            self._done.set()
        finally:
            with self._lock:
                self._running = False


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
            "last_insert": {"newest_flow_age_seconds": round(time.time() - stamp, 1) if stamp else None,
                            "rows_inserted": counter_total("waxflow_clickhouse_rows_total")}}


def insert_component(settings: Settings, store: dict[str, Any]) -> dict[str, Any]:
    """`last_insert`: not ok once this process's inserts have failed for `clickhouse.unhealthy_after`
    (the store may answer reads and still refuse writes: a full or read-only disk)."""
    from connectors.clickhouse_sink import INSERT_HEALTH

    failing = INSERT_HEALTH.failing_for()
    limit = settings.clickhouse.unhealthy_after.total_seconds()
    part = dict(store.get("last_insert") or {})
    part.update({"ok": failing <= limit, "failing_for_seconds": round(failing, 1)})
    if failing > limit:
        part["error"] = f"inserts have failed for {failing:.0f}s (clickhouse.unhealthy_after: {limit:.0f}s)"
    return part


class StoreSession:
    """The store's part of /healthz, on a probe session of its own (reopened after a failure)."""

    def __init__(self, factory: Callable[[], ReadOnlySession]) -> None:
        self._factory = factory
        self._session: ReadOnlySession | None = None

    def __call__(self) -> dict[str, Any]:
        try:
            if self._session is None:
                self._session = self._factory()
            return store_components(self._session)
        except Exception as err:  # the store's own message says why
            if self._session is not None:
                self._session.close()
                self._session = None
            return {"store": {"ok": False, "error": first_line(err, 300)}}


def store_probe(factory: Callable[[], ReadOnlySession]) -> BackgroundProbe:
    return BackgroundProbe(StoreSession(factory), every=REUSE, stale=STALE,
                           stale_answer=lambda age: {"store": {"ok": False, "error": "the store has not "
                                                               f"answered a probe for {age:.0f}s"}})


def kafka_probe(settings: Settings) -> BackgroundProbe:
    """A new Kafka admin client each time: at most every 5 s, however often /healthz is called."""
    return BackgroundProbe(lambda: broker_answers(settings), every=5.0, stale=30.0,
                           stale_answer=lambda age: False)
