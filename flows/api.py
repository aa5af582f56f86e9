"""The flows query API, as pure logic: parameter validation, table choice, SQL building and
shaping results (the filter language is flows/filter.py, the columns flows/columns.py; both are
re-exported here for callers). No clients or sockets here (connectors/http/ serves it, `waxflow
top` runs it straight on a stopped store).

User text never reaches SQL: dimension and filter column names are checked against
flows/schema.py and written by us; every filter value travels as a bound query parameter
(`{p0:String}`), typed from the column.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flows import ddl
from flows.columns import AGGREGATED_NAMES, AS_COLUMNS, COLUMNS, QueryError, column_kind, column_sql
from flows.filter import MAX_FILTER_LENGTH, Filter, lex_filter, parse_filter
from flows.settings import parse_duration

__all__ = ["AGGREGATED_NAMES", "AS_COLUMNS", "COLUMNS", "MAX_FILTER_LENGTH", "Filter", "FlowsQuery", "QueryError",
           "build_flows_sql", "column_kind", "column_sql", "exporters_sql", "lex_filter", "parse_filter",
           "parse_flows_query", "shape_exporters", "shape_flows"]

MAX_LIMIT = 50
MAX_DIMENSIONS = 6
MAX_POINTS = 2000
DEFAULT_POINTS = 100
MAX_RANGE_SECONDS = 2 * 366 * 86400
MAX_TIME_LENGTH = 64
_ASCII_DIGITS = re.compile(r"[0-9]+")
_UNIX_TIME = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
OTHER = "Other"
# Raw flows are answered at 1 s resolution; aggregated tables at their own.
RAW_TABLE = ("flows", 1)
TABLES_COARSEST_FIRST = tuple((f"flows_{sfx}", seconds) for sfx, seconds, _ in reversed(ddl.RESOLUTIONS))


# --- parameters --------------------------------------------------------------------------------

def parse_time(value: str | None, now: float, default: float) -> float:
    """Unix seconds, RFC 3339 (`2024-05-01T10:00:00Z`), `now`, or `-15m` / `15m` (ago)."""
    text = (value or "").strip()
    if not text:
        return default
    refused = QueryError("bad_time", f"{(value or '')[:MAX_TIME_LENGTH]!r} is not a time "
                                     "(unix seconds, RFC 3339, now, -15m)")
    if len(text) > MAX_TIME_LENGTH or not text.isascii():
        raise refused
    if text == "now":
        return now
    if _UNIX_TIME.fullmatch(text):
        return float(text)
    if text[0] in "-0123456789" and text.lstrip("-")[-1:].isalpha():
        try:
            return now - parse_duration(text.lstrip("-")).total_seconds()
        except (ValueError, OverflowError):  # OverflowError: more days than a timedelta holds
            pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise refused from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class FlowsQuery:
    start: int
    end: int
    dimensions: tuple[str, ...] = ()
    limit: int = 10
    filter: Filter = field(default_factory=Filter)
    unit: str = "bps"
    points: int = DEFAULT_POINTS


def only_parameters(params: Mapping[str, str], allowed: set[str]) -> None:
    """Refuse, naming them, the parameters an endpoint does not take."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise QueryError("unknown_parameter", f"unknown parameter(s): {', '.join(unknown)}")


def _bounded_int(params: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    text = params.get(key)
    if text is None or text == "":
        return default
    if not _ASCII_DIGITS.fullmatch(text) or len(text) > 12 or not low <= int(text) <= high:
        raise QueryError(f"bad_{key}", f"{key} must be a whole number in {low}-{high}, got {text!r}")
    return int(text)


def parse_dimensions(text: str | None) -> tuple[str, ...]:
    names = tuple(d.strip() for d in (text or "").split(",") if d.strip())
    for name in names:
        if name not in COLUMNS:
            raise QueryError("unknown_dimension", f"unknown dimension {name!r}")
    if len(names) > MAX_DIMENSIONS:
        raise QueryError("bad_dimensions", f"at most {MAX_DIMENSIONS} dimensions")
    if len(set(names)) != len(names):
        raise QueryError("bad_dimensions", "a dimension is listed twice")
    return names


def parse_flows_query(params: Mapping[str, str], now: float | None = None) -> FlowsQuery:
    """Validate the query string of GET /api/v0/flows; raise QueryError naming what is wrong."""
    now = time.time() if now is None else now
    only_parameters(params, {"from", "to", "dimensions", "limit", "filter", "unit", "points"})
    end = parse_time(params.get("to"), now, now)
    start = parse_time(params.get("from"), now, end - 3600)
    if start >= end:
        raise QueryError("bad_range", "from must be before to")
    if start < 0 or end >= 2**32:
        raise QueryError("bad_range", "times must fall between 1970 and 2106")
    if end - start > MAX_RANGE_SECONDS:
        raise QueryError("bad_range", f"the range is longer than {MAX_RANGE_SECONDS // 86400} days")
    if int(start) >= int(end):
        raise QueryError("bad_range", "the range is shorter than a second")
    unit = params.get("unit") or "bps"
    if unit not in UNITS:
        raise QueryError("bad_unit", f"unit is one of {', '.join(UNITS)}")
    return FlowsQuery(
        start=int(start), end=int(end),  # whole seconds: TimeReceived is; a window ending now ends at its second
        dimensions=parse_dimensions(params.get("dimensions")),
        limit=_bounded_int(params, "limit", 10, 1, MAX_LIMIT),
        filter=parse_filter(params.get("filter", "")),
        unit=unit,
        points=_bounded_int(params, "points", DEFAULT_POINTS, 1, MAX_POINTS),
    )


# --- table choice and SQL ----------------------------------------------------------------------

def choose_table(query: FlowsQuery, ttl_seconds: Mapping[str, int], now: float) -> tuple[str, int]:
    """The coarsest table that has every column asked for, still holds `start`, and whose
    resolution is not coarser than the step the points ask for; else raw flows while they still
    hold `start`; else the finest aggregated table that does (coarser steps than asked); else
    QueryError: no table keeps what is asked that long."""
    needed = set(query.dimensions) | query.filter.columns
    wanted_step = (query.end - query.start) / query.points
    aggregated = needed <= AGGREGATED_NAMES and query.unit not in RAW_ONLY_UNITS
    if aggregated:
        for table, seconds in TABLES_COARSEST_FIRST:
            if seconds <= wanted_step and query.start >= now - ttl_seconds.get(table, 0):
                return table, seconds
    if query.start >= now - ttl_seconds.get(RAW_TABLE[0], 0):
        return RAW_TABLE
    if aggregated:
        for table, seconds in reversed(TABLES_COARSEST_FIRST):
            if query.start >= now - ttl_seconds.get(table, 0):
                return table, seconds
    kept = ttl_seconds.get(RAW_TABLE[0], 0) // 86400
    only_raw = sorted(needed - AGGREGATED_NAMES) + (["flows/s"] if query.unit in RAW_ONLY_UNITS else [])
    raise QueryError("out_of_retention", "from is older than any table keeps "
                     + (f"{', '.join(only_raw)} (raw flows: {kept} days)" if only_raw else "these flows"))


def step_seconds(query: FlowsQuery, resolution: int) -> int:
    """Bucket width: the points asked for, in whole multiples of the table's resolution."""
    wanted = (query.end - query.start) / query.points
    return max(resolution, int(math.ceil(wanted / resolution)) * resolution)


# What each unit sums per second, and the columns it reads besides the time. L2 adds the 18
# bytes of Ethernet header and FCS that the L3 length (the Bytes column) leaves out, per packet, as
# the reference counts them. The interface-speed shares sum, flow by flow, the L2 bits over the
# interface's speed (Mbps): for one interface that is its utilisation; a series spanning several
# interfaces adds their shares up. Flows with an unknown speed (0) add nothing.
_L2_BITS = "(Bytes + 18 * Packets) * SamplingRate * 8"
UNITS = {
    "bps": "Bytes * SamplingRate * 8",
    "l2bps": _L2_BITS,
    "pps": "Packets * SamplingRate",
    "flows": "1",
    "inl2pct": f"if(InIfSpeed > 0, {_L2_BITS} / (InIfSpeed * 10000), 0)",
    "outl2pct": f"if(OutIfSpeed > 0, {_L2_BITS} / (OutIfSpeed * 10000), 0)",
}
UNIT_COLUMNS = {
    "bps": ("Bytes", "SamplingRate"),
    "l2bps": ("Bytes", "Packets", "SamplingRate"),
    "pps": ("Packets", "SamplingRate"),
    "flows": (),
    "inl2pct": ("Bytes", "Packets", "SamplingRate", "InIfSpeed"),
    "outl2pct": ("Bytes", "Packets", "SamplingRate", "OutIfSpeed"),
}
RAW_ONLY_UNITS = frozenset({"flows"})
"""Flow records are counted in raw flows only: an aggregated row stands for many of them."""


def _metric(unit: str) -> str:
    return UNITS[unit]


@dataclass(frozen=True)
class BuiltQuery:
    sql: str
    parameters: dict[str, Any]
    table: str
    step: int
    start: int
    end: int
    covered_end: float  # min(end, now): no flow can be stored after it yet
    origin: int = 0  # where the buckets start: on a row of the table, at or before `start`


def _cover(low: int, high: int, levels: list[tuple[str, int]], now: float) -> list[tuple[str, int, int]]:
    """(table, from, to) ranges that add up to [low, high) exactly: the coarsest of `levels`
    (finest first, raw flows at 1 s first of all) serves the whole rows inside, the next finer
    the edges it cuts. A row that ends after now holds only what arrived until now, so a range
    ending now takes the last row whole."""
    if low >= high:
        return []
    table, resolution = levels[-1]
    if resolution == 1 or len(levels) == 1:
        return [(table, low, high)]
    inner_low = -(-low // resolution) * resolution
    inner_high = -(-high // resolution) * resolution if high >= now else high - high % resolution
    if inner_low >= inner_high:
        return _cover(low, high, levels[:-1], now)
    return (_cover(low, inner_low, levels[:-1], now) + [(table, inner_low, inner_high)]
            + _cover(inner_high, high, levels[:-1], now))


def build_flows_sql(query: FlowsQuery, database: str, ttl_seconds: Mapping[str, int],
                    now: float | None = None) -> BuiltQuery:
    """One query: per time bucket and per top-N group (the rest summed as Other), the total.

    Rates are exact over the window asked. A row of an aggregated table stands for
    [TimeReceived, + resolution): the window's middle, in whole rows, comes from the chosen
    table, and the edges that cut its rows from the finer tables in turn, down to raw flows for
    the last seconds (_cover), as long as they still hold them; older edges widen to whole rows
    of the chosen table, and `from`/`to` say so. Buckets are `step` long, aligned on the chosen
    table's rows; the first and last count only their seconds inside the window."""
    now = time.time() if now is None else now
    table, resolution = choose_table(query, ttl_seconds, now)
    step = step_seconds(query, resolution)
    start, end = query.start, query.end
    levels = [RAW_TABLE] if start >= now - ttl_seconds.get(RAW_TABLE[0], 0) else []
    finer = [(name, seconds) for name, seconds in reversed(TABLES_COARSEST_FIRST) if seconds < resolution
             and start >= now - ttl_seconds.get(name, 0)]
    levels += finer + ([(table, resolution)] if resolution > 1 else [])
    if levels[0][1] > 1:  # raw flows no longer hold the start: widen to the finest table's rows
        finest = levels[0][1]
        start = start - start % finest
        if end < now:
            end = -(-end // finest) * finest
    ranges = _cover(start, end, levels, now)
    first_row = next((low for name, low, _ in ranges if name == table), start - start % resolution)
    origin = first_row - step * -(-(first_row - start) // step)
    metric = _metric(query.unit)
    dims = ", ".join(f"`{d}`" for d in query.dimensions)
    read = dict.fromkeys(["TimeReceived", *query.dimensions, *UNIT_COLUMNS[query.unit]])
    columns = ", ".join(f"`{name}`" for name in read)
    parameters: dict[str, Any] = {"origin": origin, "step": step, **query.filter.parameters}
    by_table: dict[str, list[str]] = {}
    for index, (name, low, high) in enumerate(ranges):
        parameters[f"r{index}_from"], parameters[f"r{index}_to"] = low, high
        by_table.setdefault(name, []).append(f"(TimeReceived >= toDateTime({{r{index}_from:UInt32}}) "
                                             f"AND TimeReceived < toDateTime({{r{index}_to:UInt32}}))")
    parts = [f"SELECT {columns} FROM `{database}`.`{name}` WHERE ({' OR '.join(windows)}) AND {query.filter.sql}"
             for name, windows in by_table.items()]
    source = "(" + " UNION ALL ".join(parts) + ")"
    if query.dimensions:
        shown = ", ".join(column_sql(d) for d in query.dimensions)
        top = f"SELECT {dims} FROM {source} GROUP BY {dims} ORDER BY sum({metric}) DESC LIMIT {query.limit}"
        group = f"if(({dims}) IN ({top}), [{shown}], ['{OTHER}'])"
    else:
        group = "CAST([], 'Array(String)')"
    bucket = ("toUInt32({origin:UInt32} + intDiv(toUInt32(TimeReceived) - {origin:UInt32}, {step:UInt32}) "
              "* {step:UInt32})")
    sql = f"SELECT {bucket} AS t, {group} AS d, sum({metric}) AS v FROM {source} GROUP BY t, d ORDER BY t"
    return BuiltQuery(sql, parameters, table, step, start, end, covered_end=min(float(end), now), origin=origin)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100), interpolated linearly between the closest ranks."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def shape_flows(built: BuiltQuery, query: FlowsQuery, rows: list[tuple[int, list[str], int]]) -> dict[str, Any]:
    """Rows (bucket, group, total) → per group a rate per bucket (total / the seconds of the
    bucket inside [from, min(to, now))), the average over those seconds, the largest and 95th
    percentile bucket rates, the total carried (bits, packets or flows; for the interface-speed
    units, percent-seconds), the top-N by total (Other last). Buckets wholly after now are left
    out; `time` gives each bucket's first
    second inside the window."""
    origins = list(range(built.origin, math.ceil(built.covered_end), built.step))
    times = [max(t, built.start) for t in origins]
    seconds = [min(t + built.step, built.covered_end) - max(t, built.start) for t in origins]
    covered = built.covered_end - built.start
    index = {t: i for i, t in enumerate(origins)}
    totals: dict[tuple[str, ...], list[float]] = {}
    for bucket, group, total in rows:
        values = totals.setdefault(tuple(group), [0.0] * len(origins))
        if bucket in index:
            values[index[bucket]] += total
    ordered = sorted(totals.items(), key=lambda item: (item[0] == (OTHER,), -sum(item[1])))
    series = []
    for group, values in ordered:
        rates = [value / width if width > 0 else 0.0 for value, width in zip(values, seconds)]
        series.append({"dimensions": list(group), "values": rates,
                       "average": sum(values) / covered if covered > 0 else 0.0,
                       "max": max(rates, default=0.0), "p95": percentile(rates, 95), "total": sum(values)})
    return {
        "table": built.table,
        "step": built.step,
        "unit": query.unit,
        "from": built.start,
        "to": built.end,
        "dimensions": list(query.dimensions),
        "time": times,
        "series": series,
    }


def exporters_sql(database: str) -> str:
    """Exporters and their interfaces seen recently (the exporters table, deduplicated)."""
    return (f"SELECT {column_sql('ExporterAddress')} AS address, ExporterName AS name, IfIndex, IfName, "
            f"IfDescription, IfSpeed, max(TimeReceived) AS seen FROM `{database}`.`exporters` FINAL "
            f"GROUP BY ExporterAddress, ExporterName, IfIndex, IfName, IfDescription, IfSpeed "
            f"ORDER BY name, address, IfIndex")


def shape_exporters(rows: list[tuple]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for address, name, ifindex, ifname, description, speed, seen in rows:
        entry = out.setdefault((address, name), {"address": address, "name": name, "interfaces": []})
        if ifindex:
            entry["interfaces"].append({"ifindex": ifindex, "name": ifname, "description": description,
                                        "speed": speed, "seen": str(seen)})
    return list(out.values())
