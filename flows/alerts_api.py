"""The alerts API (GET /api/v0/alerts, /api/v0/alerts/backtest) as pure logic: parameters
validated, the SQL over the alerts table, the shape of its answer."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flows import api

_NUMBER = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?")  # ASCII only


def alerts_query(params: Mapping[str, str], now: float | None = None) -> tuple[str, dict[str, Any]]:
    """GET /api/v0/alerts: alerts that were on during [from, to) (default the last day), newest
    first, at most 1000; `rule` one rule's, `active=1` only those still on."""
    api.only_parameters(params, {"from", "to", "rule", "active"})
    now = time.time() if now is None else now
    end = api.parse_time(params.get("to"), now, now)
    start = api.parse_time(params.get("from"), now, end - 86400)
    if not 0 <= start < end < 2**32:
        raise api.QueryError("bad_range", "from must be before to, both between 1970 and 2106")
    active = params.get("active", "")
    if active not in ("", "0", "1"):
        raise api.QueryError("bad_active", "active is 1 or 0")
    rule = params.get("rule", "")
    if len(rule) > 64:
        raise api.QueryError("bad_rule", "a rule name is at most 64 characters")
    where = ["Start < toDateTime({to:UInt32})", "(End = toDateTime(0) OR End >= toDateTime({from:UInt32}))"]
    if rule:
        where.append("Rule = {rule:String}")
    if active == "1":
        where.append("End = toDateTime(0)")
    return ("SELECT Rule, Key, toUInt32(Start), toUInt32(End), Measure, Value, Peak, TopSources, TopSourcePorts, "
            "TopProtocols, Action FROM {db:Identifier}.alerts FINAL WHERE " + " AND ".join(where)
            + " ORDER BY Start DESC LIMIT 1000", {"from": int(start), "to": int(end), "rule": rule})


def shape_alerts(rows: list[tuple]) -> list[dict[str, Any]]:
    names = ("rule", "key", "start", "end", "measure", "value", "peak", "top_sources", "top_source_ports",
             "top_protocols", "action")
    return [{**dict(zip(names, row)), "end": row[3] or None} for row in rows]


MAX_BACKTEST_SECONDS = 31 * 86400


def backtest_query(params: Mapping[str, str], rules: Mapping[str, Any],
                   now: float | None = None) -> tuple[Any, int, int]:
    """GET /api/v0/alerts/backtest: the rule (by name, `threshold` to try another one), and
    [from, to) over raw flows, at most 31 days (default the last day)."""
    api.only_parameters(params, {"rule", "from", "to", "threshold"})
    now = time.time() if now is None else now
    name = params.get("rule", "")
    if name not in rules:
        raise api.QueryError("unknown_rule", f"no rule {name[:64]!r}; rules: {', '.join(sorted(rules))}")
    rule = rules[name]
    text = params.get("threshold", "")
    if text:
        threshold = float(text) if _NUMBER.fullmatch(text) else 0.0
        if not 0 < threshold < float("inf"):
            raise api.QueryError("bad_threshold", "threshold is a number above 0 (e.g. 2e9)")
        rule = replace(rule, threshold=threshold)
    end = api.parse_time(params.get("to"), now, now)
    start = api.parse_time(params.get("from"), now, end - 86400)
    if not 0 <= start < end < 2**32 or end - start > MAX_BACKTEST_SECONDS:
        raise api.QueryError("bad_range", "from must be before to, at most 31 days apart")
    return rule, int(start), int(end)
