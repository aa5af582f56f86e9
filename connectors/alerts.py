"""Where alert events go: the store's `alerts` table, Prometheus (`waxflow_alert_active{rule}`),
a log line each, a signed webhook, and the rule's mitigation routes through GoBGP.

The webhook is sent from a thread of its own through a bounded queue, so a slow or dead
receiver never holds the dataflow: each event is POSTed as JSON with `X-Waxflow-Signature:
sha256=<HMAC-SHA256 of the body with webhook.secret>`, retried with exponential backoff
(tenacity) up to webhook.retries times; an event that finds the queue full, or runs out of
retries, is counted (`waxflow_alert_webhook_total{result}`) and logged (rate-limited).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge
from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

from connectors.bgp import BGPError, GoBGP
from flows import ddl, detect, mitigation
from flows.ratelimit import RateLimitedLog
from flows.settings.alerts import Alerts

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)
ACTIVE = Gauge("waxflow_alert_active", "Alerts on now, by rule", ["rule"])
EVENTS = Counter("waxflow_alert_events_total", "Alert events, by rule and kind (start, end)", ["rule", "kind"])
WEBHOOK = Counter("waxflow_alert_webhook_total", "Alert webhook deliveries, by result", ["result"])
FAILED = Counter("waxflow_alert_events_failed_total", "Alert events that could not be stored")
STORE_SKIPPED = Counter("waxflow_alert_events_not_stored_total",
                        "Alert events of a process that does not own the embedded store (not stored)")
QUEUE_SIZE = 1000


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_document(event: detect.Event, rule: detect.Rule, found: dict[str, list], action: str) -> dict[str, Any]:
    """An event as the webhook, the log and the API show it."""
    return {"kind": event.kind, "rule": event.rule, "key": detect.key_text(rule, event.key), "measure": rule.measure,
            "start": event.start, "end": event.end, "value": event.value, "peak": event.peak,
            "top_sources": found.get("sources", []), "top_source_ports": found.get("source_ports", []),
            "top_protocols": found.get("protocols", []), "action": action}


def alert_row(document: dict[str, Any]) -> list[Any]:
    """The alerts table's row (ddl.alerts_table's columns, in order) for an event."""
    def when(seconds: int | None) -> datetime:
        return datetime.fromtimestamp(seconds or 0, UTC)
    return [document["rule"], document["key"], when(document["start"]), when(document["end"]), document["measure"],
            float(document["value"]), float(document["peak"]), document["top_sources"],
            document["top_source_ports"], document["top_protocols"], document["action"],
            datetime.now(UTC)]


class Webhook:
    def __init__(self, url: str, secret: str | None, timeout: float, retries: int,
                 post: Callable[[str, bytes, dict[str, str], float], int] | None = None) -> None:
        self.url, self.secret, self.timeout, self.retries = url, secret, timeout, retries
        self._post = post or _post
        self._queue: queue.Queue[bytes] = queue.Queue(QUEUE_SIZE)
        threading.Thread(target=self._run, name="alert-webhook", daemon=True).start()

    def send(self, document: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(json.dumps(document, default=str).encode())
        except queue.Full:
            WEBHOOK.labels("dropped").inc()
            _ratelimited(logging.WARNING, "webhook:full", "alerts: webhook queue full (%d): event dropped", QUEUE_SIZE)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            headers = {"Content-Type": "application/json"}
            if self.secret:
                headers["X-Waxflow-Signature"] = sign(self.secret, body)
            try:
                for attempt in Retrying(stop=stop_after_attempt(self.retries + 1),
                                        wait=wait_exponential(multiplier=0.5, max=30)):
                    with attempt:
                        status = self._post(self.url, body, headers, self.timeout)
                        if not 200 <= status < 300:
                            raise OSError(f"HTTP {status}")
                WEBHOOK.labels("sent").inc()
            except RetryError as err:
                WEBHOOK.labels("failed").inc()
                _ratelimited(logging.WARNING, "webhook:failed", "alerts: webhook %s failed after %d attempts: %s",
                             self.url, self.retries + 1, err.last_attempt.exception())
            finally:
                self._queue.task_done()

    def drain(self, timeout: float = 30.0) -> bool:
        """True once every queued event was handed over (for a clean stop and tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._queue.unfinished_tasks


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


class AlertSink:
    """Takes the detectors' events with the flows they came from; does what each rule says."""

    def __init__(self, config: Alerts, database: str, client: Any, gobgp: GoBGP | None = None) -> None:
        self.database, self.client = database, client
        self.active: dict[str, set[tuple]] = {}  # rule → keys on
        self.rules = {r.name: r for r in config.all_rules()}
        self.detected = {name: r.rule() for name, r in self.rules.items()}  # (compiled once)
        self.mitigators = {name: mitigation.Mitigator(r.mitigation.policy()) for name, r in self.rules.items()}
        hook = config.webhook
        self.webhook = Webhook(hook.url, hook.secret, hook.timeout.total_seconds(), hook.retries) if hook.url else None
        needs_bgp = any(r.mitigation.kind != "none" and not r.mitigation.dry_run for r in self.rules.values())
        self.gobgp = gobgp or GoBGP(config.bgp.host, config.bgp.port, config.bgp.cli, dry_run=not needs_bgp)

    def handle(self, event: detect.Event, found: dict[str, list], now: float) -> dict[str, Any] | None:
        if event.rule not in self.rules:  # a rule removed from the configuration, resumed from a snapshot
            _ratelimited(logging.WARNING, "alerts:unknown", "alerts: %s event of rule %s, no longer configured, "
                         "ignored (a route it announced stays until withdrawn by hand)", event.kind, event.rule)
            FAILED.inc()
            return None
        rule, detected = self.rules[event.rule], self.detected[event.rule]
        on = self.active.setdefault(event.rule, set())
        mitigator = self.mitigators[event.rule]
        prefix = self._prefix(detected, event.key)
        if event.kind == "on":  # after a restart: already stored and posted; counted again, and its
            on.add(event.key)   # route taken back in hand (announced again: GoBGP keeps one copy),
            ACTIVE.labels(event.rule).set(len(on))  # or its end would leave it up for good
            if prefix is not None:
                self._send(mitigator.start(prefix, found))
            return None
        if event.kind == "ended":  # after a restart: its route may be in its hold-down, or due
            if prefix is not None and self.rules[event.rule].mitigation.kind != "none":
                self._held_down(mitigator, prefix, found, event.end or 0, now)
            return None
        actions: list[tuple[str, mitigation.Route]] = []
        if prefix is not None and event.kind == "start":
            actions = mitigator.start(prefix, found)
        elif prefix is not None:
            mitigator.end(prefix, now)
        action = ", ".join(f"{verb} {route.kind} {route.prefix}" for verb, route in actions) or "none"
        document = event_document(event, detected, found, action)
        self.client.insert(ddl.ALERTS, [alert_row(document)], database=self.database)
        EVENTS.labels(event.rule, event.kind).inc()
        (on.add if event.kind == "start" else on.discard)(event.key)
        ACTIVE.labels(event.rule).set(len(on))
        log.warning("alert %s: %s %s %s (%s %.4g, peak %.4g)%s", event.kind, event.rule, document["key"],
                    "since" if event.kind == "start" else "ended", rule.measure, event.value, event.peak,
                    f"; {action}" if actions else "")
        self._send(actions)
        if self.webhook is not None:
            self.webhook.send(document)
        return document

    def _held_down(self, mitigator: mitigation.Mitigator, prefix: str, found: dict[str, list], ended: int,
                   now: float) -> None:
        """An alert that ended before a restart: withdraw its route now if the hold-down has passed
        (a withdrawal of a route GoBGP no longer has is harmless), else take it back in hand so
        the hold-down withdraws it."""
        if ended + mitigator.policy.hold_down <= now:
            self._send([("withdraw", mitigation.Route(mitigator.policy.kind, prefix, mitigator._matching(found)))])
            return
        self._send(mitigator.start(prefix, found))
        mitigator.end(prefix, ended)

    def tick(self, now: float) -> None:
        """Withdraw the routes whose hold-down has passed."""
        for mitigator in self.mitigators.values():
            self._send(mitigator.due(now))

    def _send(self, actions: list[tuple[str, mitigation.Route]]) -> None:
        for verb, route in actions:
            try:
                self.gobgp.send(verb, route)
            except BGPError:
                pass  # counted and logged by GoBGP.send; the alert itself stands

    @staticmethod
    def _prefix(rule: detect.Rule, key: tuple) -> str | None:
        """The destination a route would cover: the key's address part, if it has one."""
        for part, value in zip(rule.key, key):
            if part.column == "DstAddr":
                return mitigation.destination(value, part.v4_prefix, part.v6_prefix)
        return None


class BacktestTooLong(RuntimeError):
    pass


def backtest(query: Callable[[str, dict[str, Any]], list[tuple]], rule: detect.Rule, database: str,
             start: int, end: int, chunk: int = 3600, budget: float | None = None) -> list[dict[str, Any]]:
    """When `rule` would have fired over raw flows in [start, end): the live detector's code fed
    from the store an hour at a time (`query(sql, parameters)` runs a read-only query). Alerts
    still on at `end` have no end. Each start carries its signature over its first seconds.
    `budget`: seconds the whole backtest may take (each query has its own limit too), else
    BacktestTooLong — the API's callers get that, the command on a stopped store has none."""
    deadline = None if budget is None else time.monotonic() + budget
    detector = detect.Detector(rule)
    events: list[detect.Event] = []
    for low in range(start, end, chunk):
        if deadline is not None and time.monotonic() > deadline:
            raise BacktestTooLong(f"the backtest took longer than {budget:g} s by {low - start} s of "
                                  f"{end - start} s of flows; try a shorter range, or `waxflow alerts backtest` "
                                  "on a stopped store")
        high = min(end, low + chunk)
        sql, parameters = detect.totals_sql(rule, database, low, high)
        detect.feed(detector, detect.rows_totals(rule, query(sql, parameters)))
        events += detector.advance(high)
    out = []
    for event in events:
        found: dict[str, list] = {}
        if deadline is not None and time.monotonic() > deadline:
            raise BacktestTooLong(f"the backtest took longer than {budget:g} s ({len(events)} events); try a higher "
                                  "threshold, a shorter range, or `waxflow alerts backtest` on a stopped store")
        if event.kind == "start":
            sql, parameters = detect.signature_sql(rule, database, event.key, event.start,
                                                   event.start + max(1, rule.min_duration))
            sources, ports, protocols = query(sql, parameters)[0]
            found = {"sources": list(sources), "source_ports": list(ports), "protocols": list(protocols)}
        out.append(event_document(event, rule, found, "backtest"))
    return out


class AlertsOutput(DynamicSink):
    """The outlet's alerts output: each worker's partition handles the events of the rules it
    owns. With the embedded store only process 0 may write it: a partition elsewhere acts on its
    events (log, metrics, webhook, routes) without storing them, and says so once."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertsPartition:
        from connectors.cluster import process_id

        store = not (self.settings.clickhouse.embedded and process_id() != 0)
        if not store:
            log.warning("alerts: this process does not own the embedded store; its alerts are not stored")
        client = clickhouse_connect_client(self.settings) if store else _NoStore()
        return _AlertsPartition(AlertSink(self.settings.alerts, self.settings.clickhouse.database, client))


class _NoStore:
    def insert(self, *args: Any, **kwargs: Any) -> None:
        STORE_SKIPPED.inc()


def clickhouse_connect_client(settings: Any) -> Any:
    from connectors.clickhouse import connect

    return connect(settings.clickhouse)


class _AlertsPartition(StatelessSinkPartition):
    def __init__(self, sink: AlertSink) -> None:
        self.sink = sink

    def write_batch(self, items: list[tuple[str, tuple[detect.Event, dict]]]) -> None:
        now = time.time()
        for _, (event, found) in items:
            try:
                self.sink.handle(event, found, now)
            except Exception as err:  # the store refusing must not stop detection: counted, logged
                FAILED.inc()
                _ratelimited(logging.ERROR, "alerts:handle", "alerts: %s %s not recorded: %s", event.kind,
                             event.rule, err)
        self.sink.tick(now)

    def close(self) -> None:
        if self.sink.webhook is not None:
            self.sink.webhook.drain(10)
