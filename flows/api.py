"""The flows query API, as pure logic: parameter validation, the filter grammar, table choice,
SQL building and shaping results. No clients or sockets here (connectors/http/ serves it,
`waxflow top` runs it straight on a stopped store).

User text never reaches SQL: dimension and filter column names are checked against
flows/schema.py and written by us; every filter value travels as a bound query parameter
(`{p0:String}`), typed from the column.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import LarkError, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from flows import ddl, schema
from flows.settings import parse_duration

MAX_LIMIT = 50
MAX_DIMENSIONS = 6
MAX_POINTS = 2000
DEFAULT_POINTS = 100
MAX_FILTER_LENGTH = 2000
MAX_RANGE_SECONDS = 2 * 366 * 86400
MAX_FILTER_VALUES = 200
MAX_FILTER_DEPTH = 64  # nesting of NOT / parentheses; deeper would exhaust the transformer's stack
MAX_TIME_LENGTH = 64
_ASCII_DIGITS = re.compile(r"[0-9]+")
_UNIX_TIME = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
OTHER = "Other"


class QueryError(ValueError):
    """A request the API refuses; `reason` is a short fixed word, the message says what is wrong."""

    def __init__(self, reason: str, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.position = position  # in a filter: the character offset of what is wrong


# --- columns one may group or filter by --------------------------------------------------------

_EXCLUDED = {"TimeReceived", "TimeFlowStart", "TimeFlowEnd", "Bytes", "Packets"}


def queryable_columns() -> dict[str, schema.Column]:
    """Dimensions and filter columns: every scalar column but times and counters."""
    return {c.name: c for c in schema.COLUMNS
            if c.name not in _EXCLUDED and not c.ch_type.startswith("Array")}


COLUMNS = queryable_columns()
AGGREGATED_NAMES = frozenset(c.name for c in schema.AGGREGATED)
AS_COLUMNS = frozenset(c.name for c in schema.COLUMNS if c.name.endswith("AS") and c.ch_type == "UInt32")
# Raw flows are answered at 1 s resolution; aggregated tables at their own.
RAW_TABLE = ("flows", 1)
TABLES_COARSEST_FIRST = tuple((f"flows_{sfx}", seconds) for sfx, seconds, _ in reversed(ddl.RESOLUTIONS))


def _kind(column: schema.Column) -> str:
    t = column.ch_type
    if t == "IPv6":
        return "ip"
    if t.startswith("Enum8"):
        return "enum"
    if t.startswith(("UInt", "Int")):
        return "int"
    return "string"


def column_kind(name: str) -> str:
    """How the filter language writes the column's values: int (a number), string or enum (quoted
    text), ip (a quoted address or subnet)."""
    return _kind(COLUMNS[name])


def column_sql(name: str) -> str:
    """A column as a display string (addresses without the IPv4-mapped prefix)."""
    kind = _kind(COLUMNS[name])
    if kind == "ip":
        return f"replaceRegexpOne(IPv6NumToString(`{name}`), '^::ffff:', '')"
    if COLUMNS[name].ch_type.startswith("FixedString"):
        return f"replaceAll(toString(`{name}`), '\\0', '')"
    return f"toString(`{name}`)"


# --- the filter grammar ------------------------------------------------------------------------

FILTER_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> negate
         | atom
?atom: comparison
     | "(" or_expr ")"
comparison: COLUMN OP value                          -> compare
          | COLUMN _IN "(" value ("," value)* ")"     -> within
          | COLUMN _NOT _IN "(" value ("," value)* ")" -> not_within
?value: NUMBER | STRING
OP.2: "!=" | "<>" | "<=" | ">=" | "=" | "<" | ">" | /like\b/i | /ilike\b/i
_AND.2: /and\b/i
_OR.2: /or\b/i
_NOT.2: /not\b/i
_IN.2: /in\b/i
COLUMN: /[A-Za-z][A-Za-z0-9]*/
NUMBER: /[0-9]+/
STRING: /'[^'\n]*'/ | /"[^"\n]*"/
%ignore /\s+/
"""

_parser = Lark(FILTER_GRAMMAR, parser="lalr")
_INT_OPS = {"=", "!=", "<>", "<", "<=", ">", ">="}
_STRING_OPS = {"=", "!=", "<>", "LIKE", "ILIKE"}


@dataclass
class Filter:
    """A parsed filter: SQL with placeholders, the bound values, and the columns it reads."""

    sql: str = "1"
    parameters: dict[str, Any] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)


class _ToSQL(Transformer):
    def __init__(self) -> None:
        super().__init__()
        self.out = Filter()
        self.position = 0  # where the token being checked starts (for error positions)

    def _param(self, kind: str, value: Any) -> str:
        name = f"f{len(self.out.parameters)}"
        self.out.parameters[name] = value
        return "{" + name + ":" + {"int": "UInt64", "ip": "String"}.get(kind, "String") + "}"

    def _column(self, token: Token) -> tuple[str, str]:
        self.position = token.start_pos
        name = str(token)
        if name not in COLUMNS:
            raise QueryError("unknown_column", f"filter: unknown column {name!r}")
        self.out.columns.add(name)
        return name, _kind(COLUMNS[name])

    def _value(self, name: str, kind: str, token: Token) -> Any:
        self.position = token.start_pos
        text = str(token)
        quoted = token.type == "STRING"
        if quoted:
            text = text[1:-1]
        if kind == "int":
            if quoted or not _ASCII_DIGITS.fullmatch(text) or int(text) >= 2**64:
                raise QueryError("bad_filter", f"filter: {name} needs a whole number, got {token!s}")
            return int(text)
        if not quoted:
            raise QueryError("bad_filter", f"filter: {name} needs a quoted value, got {token!s}")
        if kind == "enum":
            allowed = [v.split("'")[1] for v in COLUMNS[name].ch_type[6:-1].split(",")]
            if text not in allowed:
                raise QueryError("bad_filter", f"filter: {name} is one of {', '.join(allowed)}")
        return text

    def _ip_condition(self, name: str, op: str, text: str) -> str:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise QueryError("bad_filter", f"filter: {name} needs an address or a subnet, got {text!r}") from None
        if op not in ("=", "!=", "<>"):
            raise QueryError("bad_filter", f"filter: {name} compares with = or != only")
        lo, hi = _mapped(net.network_address), _mapped(net.broadcast_address)
        inside = (f"(`{name}` BETWEEN toIPv6({self._param('ip', lo)}) "
                  f"AND toIPv6({self._param('ip', hi)}))")
        return inside if op == "=" else f"NOT {inside}"

    @v_args(inline=True)
    def compare(self, column: Token, op: Token, value: Token) -> str:
        name, kind = self._column(column)
        self.position = op.start_pos
        op = str(op).upper()
        if kind == "ip":
            if op not in ("=", "!=", "<>"):
                raise QueryError("bad_filter", f"filter: {name} compares with = or != only")
            return self._ip_condition(name, op, self._value(name, "string", value))
        allowed = _INT_OPS if kind == "int" else _STRING_OPS
        if op not in allowed:
            raise QueryError("bad_filter", f"filter: {name} does not take {op}")
        return f"`{name}` {'!=' if op == '<>' else op} {self._param(kind, self._value(name, kind, value))}"

    def _within(self, items: list, negate: bool) -> str:
        column, *values = items
        name, kind = self._column(column)
        if len(values) > MAX_FILTER_VALUES:
            raise QueryError("bad_filter", f"filter: at most {MAX_FILTER_VALUES} values in a list")
        if kind == "ip":
            parts = [self._ip_condition(name, "=", self._value(name, "string", v)) for v in values]
            joined = "(" + " OR ".join(parts) + ")"
            return f"NOT {joined}" if negate else joined
        placeholders = ", ".join(self._param(kind, self._value(name, kind, v)) for v in values)
        return f"`{name}` {'NOT IN' if negate else 'IN'} ({placeholders})"

    def within(self, items: list) -> str:
        return self._within(items, False)

    def not_within(self, items: list) -> str:
        return self._within(items, True)

    def and_expr(self, items: list) -> str:
        return "(" + " AND ".join(items) + ")"

    def or_expr(self, items: list) -> str:
        return "(" + " OR ".join(items) + ")"

    @v_args(inline=True)
    def negate(self, item: str) -> str:
        return f"NOT ({item})"


def _mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"::ffff:{address}" if address.version == 4 else str(address)


def _check_depth(tree: Tree) -> None:
    """Refuse filters nested deeper than MAX_FILTER_DEPTH (walked without recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise QueryError("bad_filter", f"filter: nested deeper than {MAX_FILTER_DEPTH} levels")
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def parse_filter(text: str) -> Filter:
    """`SrcAS = 2906 AND InIfBoundary = 'external' AND NOT DstAddr = '10.0.0.0/8'` → SQL + values."""
    text = (text or "").strip()
    if not text:
        return Filter()
    if len(text) > MAX_FILTER_LENGTH:
        raise QueryError("bad_filter", f"filter: longer than {MAX_FILTER_LENGTH} characters")
    try:
        tree = _parser.parse(text)
        _check_depth(tree)
        transformer = _ToSQL()
        sql = transformer.transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, QueryError):
            if err.orig_exc.position is None:
                err.orig_exc.position = transformer.position
            raise err.orig_exc from None
        raise
    except UnexpectedInput as err:
        raise QueryError("bad_filter", *_parse_error(err, text)) from None
    except LarkError as err:
        first = str(err).strip().splitlines()[0]
        raise QueryError("bad_filter", f"filter: cannot parse: {first}") from None
    transformer.out.sql = sql
    return transformer.out


def lex_filter(text: str) -> Iterator[Token]:
    """The filter's tokens (COLUMN, OP, STRING, ...) with their positions, by the grammar's lexer."""
    try:
        yield from _parser.lex(text)
    except UnexpectedInput as err:
        raise QueryError("bad_filter", *_parse_error(err, text)) from None


def _parse_error(err: UnexpectedInput, text: str) -> tuple[str, int]:
    """A parse error's message and character offset, worded for a person typing a filter."""
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        return "filter: it ends too soon (a value, a column or a closing parenthesis is missing)", len(text)
    if isinstance(err, UnexpectedToken):
        return f"filter: {str(err.token)!r} is not expected here", err.token.start_pos
    position = getattr(err, "pos_in_stream", None) or 0
    return f"filter: {text[position:position + 1]!r} is not expected here", position


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
        parsed = parsed.replace(tzinfo=timezone.utc)
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
    known = {"from", "to", "dimensions", "limit", "filter", "unit", "points"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise QueryError("unknown_parameter", f"unknown parameter(s): {', '.join(unknown)}")
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
    units, percent-seconds), the top-N by total (Other last). Buckets wholly after now are left out; `time` gives each bucket's first
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
