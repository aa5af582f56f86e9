"""The home page's widgets (GET /api/v0/widgets/*) as pure logic: validation, SQL, shaping.

    flow-rate        bps, pps and flows/s over the last `window` (default 5 minutes)
    graph            bps and flows/s over a range (default the last hour), one series each
    top/<dimension>  the top values of one dimension over a range, with their share of the total
    last-flow        the newest flow stored, every column

Each is one or two small queries over the tables the flows API reads, with the same limits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flows import api

MAX_TOP = 20
MAX_WINDOW = 86400


def flow_rate_window(params: Mapping[str, str], now: float | None = None) -> tuple[int, int]:
    """[from, to) of the flow-rate widget: `window` seconds (1-86400, default 300) ending now."""
    api.only_parameters(params, {"window"})
    now = time.time() if now is None else now
    text = params.get("window") or "300"
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_WINDOW):
        raise api.QueryError("bad_window", f"window is a number of seconds in 1-{MAX_WINDOW}, got {text[:20]!r}")
    end = int(now)
    return end - int(text), end


def flow_rate_sql(database: str) -> str:
    """Totals over raw flows in [{from}, {to}): bits, packets (sampling applied) and flow records."""
    return ("SELECT sum(Bytes * SamplingRate * 8), sum(Packets * SamplingRate), count() "
            f"FROM `{database}`.`flows` WHERE TimeReceived >= toDateTime({{from:UInt32}}) "
            "AND TimeReceived < toDateTime({to:UInt32})")


def shape_flow_rate(start: int, end: int, row: tuple[Any, Any, Any]) -> dict[str, Any]:
    seconds = end - start
    bits, packets, flows = (float(v or 0) for v in row)
    return {"from": start, "to": end, "bps": bits / seconds, "pps": packets / seconds,
            "flows_per_second": flows / seconds}


def graph_queries(params: Mapping[str, str], now: float | None = None) -> tuple[api.FlowsQuery, api.FlowsQuery]:
    """The bps and flows/s queries of the graph widget (from, to, points, filter)."""
    api.only_parameters(params, {"from", "to", "points", "filter"})
    base = {"from": "-1h", "points": "60", **{k: v for k, v in params.items() if v}}
    bps = api.parse_flows_query({**base, "unit": "bps"}, now)
    flows = api.parse_flows_query({**base, "from": str(bps.start), "to": str(bps.end), "unit": "flows"}, now)
    return bps, flows


def shape_graph(bps: dict[str, Any], flows: dict[str, Any]) -> dict[str, Any]:
    """Two series, each on its own bucket times (raw flows and an aggregated table align their
    buckets differently)."""
    def series(answer: dict[str, Any]) -> dict[str, Any]:
        values = answer["series"][0]["values"] if answer["series"] else [0.0] * len(answer["time"])
        return {"time": answer["time"], "step": answer["step"], "values": values, "table": answer["table"]}
    return {"from": bps["from"], "to": bps["to"], "bps": series(bps), "flows_per_second": series(flows)}


def top_query(dimension: str, params: Mapping[str, str], now: float | None = None) -> api.FlowsQuery:
    """One dimension's top values over a range: from (default -1h), to, limit (1-20), filter, unit."""
    api.only_parameters(params, {"from", "to", "limit", "filter", "unit"})
    if len(api.parse_dimensions(dimension)) != 1:
        raise api.QueryError("bad_dimension", "the path names one dimension: /api/v0/widgets/top/SrcAS")
    limit = params.get("limit") or "5"
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 3 and 1 <= int(limit) <= MAX_TOP):
        raise api.QueryError("bad_limit", f"limit must be a whole number in 1-{MAX_TOP}, got {limit[:20]!r}")
    return api.parse_flows_query({"from": "-1h", **{k: v for k, v in params.items() if v},
                                  "dimensions": dimension, "points": "1"}, now)


def shape_top(answer: dict[str, Any]) -> dict[str, Any]:
    """Top values with their rate and share of everything in the window (Other included)."""
    total = sum(s["average"] for s in answer["series"])
    names = answer.get("names", {})
    top = [{"value": s["dimensions"][0], "name": names.get(s["dimensions"][0], ""), "rate": s["average"],
            "percent": 100 * s["average"] / total if total else 0.0}
           for s in answer["series"] if s["dimensions"] != [api.OTHER]]
    other = sum(s["average"] for s in answer["series"] if s["dimensions"] == [api.OTHER])
    return {"dimension": answer["dimensions"][0], "unit": answer["unit"], "from": answer["from"],
            "to": answer["to"], "table": answer["table"], "top": top, "other": other, "total": total}


def last_flow_sql(database: str) -> str:
    """The newest flow. max(TimeReceived) comes from the parts' min/max index, and the row from
    the sorting key's first column, so this stays cheap on a large table."""
    return (f"SELECT * FROM `{database}`.`flows` WHERE TimeReceived = "
            f"(SELECT max(TimeReceived) FROM `{database}`.`flows`) LIMIT 1")
