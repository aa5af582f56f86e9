"""What `waxflow up` shows: rates from the inlet's and the outlet's /metrics over a sliding
window, and top-N tables from the API, fetched in the background so that a slow or hanging API
never stops the supervisor's loop. Nothing here raises: an endpoint that does not answer is
simply missing from this round."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from connectors.http import APIError, APIUnavailable, api_base, call_api
from flows.settings import Settings, split_host_port

log = logging.getLogger(__name__)

WINDOW = 10.0  # seconds the rates are computed over
TOP_EVERY = 5.0
TOP_TIMEOUT = 5.0


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Prometheus text → {sample name: sum over labels}; empty when nothing (usable) answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read().decode()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals
    except Exception:  # refused, reset, timed out, half an answer, not Prometheus text
        return {}


@dataclass
class Status:
    """What the live view shows."""

    received: float = 0.0  # flows/s decoded by the outlet, over the window
    stored: float = 0.0  # rows/s inserted, over the window
    datagrams: float = 0.0  # datagrams/s received by the inlet, over the window
    kernel_drops: float = 0.0
    decode_errors: float = 0.0
    lag: float = 0.0  # the outlet's consumer lag, summed over partitions
    rows_total: float = 0.0
    outlet_answers: bool = True
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


_RATES = {"received": "flows", "stored": "rows", "datagrams": "datagrams"}


class Monitor:
    TOP = (("exporters", "ExporterName"), ("AS", "SrcAS"), ("interfaces", "InIfDescription"))

    def __init__(self, settings: Settings, window: float = WINDOW) -> None:
        self.settings = settings
        host, port = split_host_port(settings.inlet.metrics_listen)
        self.inlet_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/metrics"
        self.outlet_url = api_base(settings) + "/metrics"
        self.window = window
        self.samples: deque[tuple[float, dict[str, float]]] = deque()
        self.status = Status()
        self.acked_seen = 0.0
        self.last_read = -1.0
        self.as_names: dict[int, str] | None = None
        self._top_at = float("-inf")
        self._top_thread: threading.Thread | None = None

    def _totals(self) -> dict[str, float] | None:
        inlet, outlet = scrape(self.inlet_url), scrape(self.outlet_url)
        if not outlet:
            return None
        return {
            "datagrams": inlet.get("waxflow_inlet_datagrams_total", 0.0),
            "drops": inlet.get("waxflow_inlet_kernel_drops_total", 0.0),
            "acked": inlet.get("waxflow_inlet_kafka_acked_total", 0.0),
            "lag": outlet.get("waxflow_kafka_consumer_lag", 0.0),
            "read": outlet.get("waxflow_outlet_messages_total", 0.0),
            "flows": outlet.get("waxflow_outlet_flows_total", 0.0),
            "rows": outlet.get("waxflow_clickhouse_rows_total", 0.0),
            "errors": outlet.get("waxflow_decode_errors_total", 0.0),
            "pending": outlet.get("waxflow_clickhouse_pending_rows", 0.0),
        }

    def add_sample(self, now: float, totals: dict[str, float]) -> Status:
        """Rates over the last `window` seconds: one slow insert does not read as 0 then 2×."""
        s = self.status
        self.samples.append((now, totals))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        first_at, first = self.samples[0]
        elapsed = now - first_at
        for name, key in _RATES.items():
            setattr(s, name, max(0.0, totals[key] - first[key]) / elapsed if elapsed > 0 else 0.0)
        s.kernel_drops, s.decode_errors, s.rows_total = totals["drops"], totals["errors"], totals["rows"]
        s.lag = totals["lag"]
        self.acked_seen = max(self.acked_seen, totals["acked"])
        return s

    def update(self, with_top: bool = True) -> Status:
        totals = self._totals()
        self.status.outlet_answers = totals is not None
        if totals is not None:
            self.add_sample(time.monotonic(), totals)
        if with_top:
            self._refresh_top()
        return self.status

    def _refresh_top(self) -> None:
        now = time.monotonic()
        busy = self._top_thread is not None and self._top_thread.is_alive()
        if busy or now - self._top_at < TOP_EVERY:
            return
        self._top_at = now
        self._top_thread = threading.Thread(target=self._fetch_top, name="waxflow-up-top", daemon=True)
        self._top_thread.start()

    def _fetch_top(self) -> None:
        try:
            top = {}
            for title, dimension in self.TOP:
                try:
                    body = call_api(self.settings, "/api/v0/flows", {"from": "-5m", "dimensions": dimension,
                                                                     "limit": "5", "points": "1"},
                                    timeout=TOP_TIMEOUT)
                except (APIError, APIUnavailable):
                    continue
                top[title] = [(self._label(dimension, s["dimensions"]), s["average"]) for s in body["series"]]
            self.status.top = top
        except Exception:  # the view only loses its tables for this round
            log.debug("up: top tables failed", exc_info=True)

    def _label(self, dimension: str, values: list[str]) -> str:
        """`AS2906 Netflix` for AS numbers (the shipped or configured AS names), else the value."""
        text = " ".join(values) or "-"
        if dimension.endswith("AS") and text.isdigit():
            if self.as_names is None:
                from connectors.clickhouse import lookup_rows

                self.as_names = {int(asn): name for asn, name in lookup_rows("asns", self.settings.clickhouse)}
            return f"AS{text} {self.as_names.get(int(text), '')}".rstrip()
        return text

    def drained(self) -> bool:
        """The outlet has read at least what the inlet was last seen acknowledging (its /metrics go
        away when it stops), has read nothing more since the previous call, and holds no rows."""
        totals = self._totals()
        if totals is None:
            return False
        self.acked_seen = max(self.acked_seen, totals["acked"])
        steady = totals["read"] == self.last_read
        self.last_read = totals["read"]
        return steady and totals["read"] >= self.acked_seen and totals["pending"] == 0
