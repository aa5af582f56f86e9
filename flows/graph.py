"""GET /api/v0/graph as pure logic: what the console draws, built from one to three flows queries.

A graph is the flows query asked for, plus on request its reverse direction (every Src/Dst and
In/Out column of the dimensions and the filter swapped: the answers of a conversation) and the
same window shifted back a day or a week (the previous period, as a total). A sankey asks for
one point and turns the top-N groups into links between consecutive dimensions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flows import api

TYPES = ("series", "sankey")
PREVIOUS = {"": 0, "day": 86400, "week": 7 * 86400}
_SIDES = {"Src": "Dst", "Dst": "Src", "In": "Out", "Out": "In"}
_SIDE = re.compile(r"^(Src|Dst|In|Out)(?=[A-Z0-9])")
_OWN = frozenset({"type", "bidirectional", "previous"})
_REVERSE_UNIT = {"inl2pct": "outl2pct", "outl2pct": "inl2pct"}  # the answers leave by the interface it came in


@dataclass(frozen=True)
class GraphQuery:
    kind: str
    main: api.FlowsQuery
    reverse: api.FlowsQuery | None
    previous: api.FlowsQuery | None
    shift: int  # seconds the previous period is before the main one


def reverse_name(name: str) -> str:
    """The column of the other direction (SrcAS → DstAS, InIfName → OutIfName); the same
    column when it has no side or its counterpart is not a column."""
    swapped = _SIDE.sub(lambda m: _SIDES[m.group(1)], name)
    return swapped if swapped in api.COLUMNS else name


def reverse_filter(text: str) -> str:
    """The filter with each column name swapped for the other direction's; values, operators
    and spacing are left as they are (column tokens are found by the filter's own lexer, so a
    quoted 'SrcAS' stays). Raises QueryError for text the lexer cannot read."""
    out, last = [], 0
    for token in api.lex_filter(text):
        if token.type == "COLUMN":
            out += [text[last:token.start_pos], reverse_name(str(token))]
            last = token.end_pos
    return "".join(out) + text[last:]


def _flag(params: Mapping[str, str], key: str) -> bool:
    value = params.get(key, "")
    if value not in ("", "0", "1", "true", "false"):
        raise api.QueryError(f"bad_{key}", f"{key} is 1/true or 0/false, got {value[:20]!r}")
    return value in ("1", "true")


def parse_graph_query(params: Mapping[str, str], now: float | None = None) -> GraphQuery:
    """Validate GET /api/v0/graph: the flows parameters, plus type (series | sankey),
    bidirectional (1/0) and previous (day | week)."""
    kind = params.get("type") or "series"
    if kind not in TYPES:
        raise api.QueryError("bad_type", f"type is one of {', '.join(TYPES)}")
    previous = params.get("previous", "")
    if previous not in PREVIOUS:
        raise api.QueryError("bad_previous", "previous is day or week")
    flows_params = {key: value for key, value in params.items() if key not in _OWN}
    if kind == "sankey":
        if flows_params.get("points") not in (None, "", "1"):
            raise api.QueryError("bad_points", "a sankey is one point: leave points out")
        flows_params["points"] = "1"
    main = api.parse_flows_query(flows_params, now)
    if kind == "sankey" and len(main.dimensions) < 2:
        raise api.QueryError("bad_dimensions", "a sankey needs two dimensions or more")
    reverse = None
    if _flag(params, "bidirectional"):
        reverse = api.parse_flows_query({**flows_params, "from": str(main.start), "to": str(main.end),
                                         "unit": _REVERSE_UNIT.get(main.unit, main.unit),
                                         "dimensions": ",".join(reverse_name(d) for d in main.dimensions),
                                         "filter": reverse_filter(flows_params.get("filter", ""))}, now)
    shift = PREVIOUS[previous]
    before = None
    if shift:
        if main.start - shift < 0:
            raise api.QueryError("bad_range", "the previous period would start before 1970")
        before = api.FlowsQuery(start=main.start - shift, end=main.end - shift, filter=main.filter,
                                unit=main.unit, points=main.points)
    return GraphQuery(kind, main, reverse, before, shift)


def sankey(answer: Mapping[str, Any], names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Nodes ("Dimension: value") and links between consecutive dimensions of each top-N group,
    weighted by its average rate (Other is left out: it has no values to place)."""
    nodes: dict[str, None] = {}
    links: dict[tuple[str, str], float] = {}
    for series in answer["series"]:
        values = series["dimensions"]
        if len(values) < 2:
            continue
        labels = [f"{names[i]}: {value}" for i, value in enumerate(values)]
        for source, target in zip(labels, labels[1:]):
            nodes.update({source: None, target: None})
            links[(source, target)] = links.get((source, target), 0.0) + series["average"]
    return {"nodes": [{"name": name} for name in nodes],
            "links": [{"source": s, "target": t, "value": v} for (s, t), v in links.items()]}


def shape_graph(query: GraphQuery, main: dict[str, Any], reverse: dict[str, Any] | None,
                previous: dict[str, Any] | None) -> dict[str, Any]:
    """One answer: the main flows answer, `reverse` (its dimensions the swapped names),
    `previous` (times moved forward by `shift` so they line up with the main ones) and, for a
    sankey, its nodes and links (with the reverse direction's traffic, see _both_ways)."""
    out = {**main, "type": query.kind, "reverse": reverse, "previous": None}
    if previous is not None:
        out["previous"] = _on_main_buckets(previous, main, query.shift)
    if query.kind == "sankey":
        out["sankey"] = _both_ways(sankey(main, list(query.main.dimensions)),
                                   sankey(reverse, list(query.main.dimensions)) if reverse else None)
    return out


def _edges(answer: Mapping[str, Any], shift: int = 0) -> list[int]:
    """The buckets' boundaries: each bucket's first second, then the end of the last."""
    times = [t + shift for t in answer["time"]]
    if not times:
        return []
    return times + [min(answer["to"] + shift, times[-1] + answer["step"])]


def _on_main_buckets(previous: dict[str, Any], main: Mapping[str, Any], shift: int) -> dict[str, Any]:
    """The previous period moved forward by `shift` and re-bucketed onto the main answer's
    buckets (its own table, hence its step, may differ: a week ago may be past a table's TTL):
    each of its buckets' totals spread over the main buckets it overlaps, then divided by their
    seconds."""
    source, target = _edges(previous, shift), _edges(main)
    series = []
    for s in previous["series"]:
        rates = []
        for low, high in zip(target, target[1:]):
            carried = sum(value * max(0, min(high, b) - max(low, a))
                          for value, a, b in zip(s["values"], source, source[1:]))
            rates.append(carried / (high - low) if high > low else 0.0)
        series.append({**s, "values": rates, "max": max(rates, default=0.0)})
    return {**previous, "shift": shift, "time": list(main["time"]), "step": main["step"], "series": series}


def _both_ways(forward: dict[str, list[dict[str, Any]]],
               back: dict[str, list[dict[str, Any]]] | None) -> dict[str, list[dict[str, Any]]]:
    """The reverse direction's groups placed under the main dimensions' names (its DstAS value
    where the main graph has SrcAS): each link then carries a conversation both ways, `forward`
    and `reverse` apart, and the graph stays acyclic as a sankey must be."""
    for link in forward["links"]:
        link["forward"], link["reverse"] = link["value"], 0.0
    if back is None:
        return forward
    links = {(link["source"], link["target"]): link for link in forward["links"]}
    known = {node["name"] for node in forward["nodes"]}
    forward["nodes"] += [node for node in back["nodes"] if node["name"] not in known]
    for link in back["links"]:
        merged = links.setdefault((link["source"], link["target"]),
                                  {"source": link["source"], "target": link["target"], "value": 0.0,
                                   "forward": 0.0, "reverse": 0.0})
        merged["value"] += link["value"]
        merged["reverse"] += link["value"]
    forward["links"] = list(links.values())
    return forward
