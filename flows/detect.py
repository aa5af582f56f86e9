"""Detection rules as pure logic: what a rule measures over which key, and the per-key state
machine that turns per-second totals into alert events. One implementation for both callers:
the live dataflow feeds it totals aggregated from flow batches (`batch_totals`), the backtest
feeds it the same totals read from the store (`totals_sql`), so both fire at the same seconds.

A rule: flows matching `filter`, grouped by `key` (columns, addresses optionally cut to a
prefix: `DstAddr/24`, `InIfBoundary+DstAddr`), a `measure` (bps, pps, flows/s, distinct source
addresses, SYN ratio) over a sliding `window`, compared with a `threshold`; it fires when the
measure stays at or over it for `min_duration`, ends when it stays under it for a window, and a
key that ended waits `cooldown` before it can fire again. Keys are bounded per rule
(`max_keys`): beyond, the quietest idle key is evicted (counted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.columns import COLUMNS, QueryError, column_kind
from flows.filter import arrow_filter, parse_filter

MEASURES = ("bps", "pps", "flows", "distinct_src", "syn_ratio")
NEGLIGIBLE = 0.01
"""A key's second counts only when it carries at least this share of the threshold (of the
packets/s floor for SYN ratios): most keys are far under it, and this keeps them out of Python.
A window's measure is then under by at most this share of the threshold per source of totals
(one per worker), the same live and in the backtest."""
DISTINCT_CAP = 65_536
"""Distinct source addresses are counted exactly up to this many per key and second (then saturate)."""
TCP, SYN, ACK = 6, 0x02, 0x10


@dataclass(frozen=True)
class KeyPart:
    column: str
    v4_prefix: int | None = None  # addresses: IPv4 (mapped) cut to this many bits
    v6_prefix: int | None = None  # and IPv6 to this many

    @property
    def label(self) -> str:
        if self.v4_prefix is None:
            return self.column
        return f"{self.column}/{self.v4_prefix}/{self.v6_prefix}"


def parse_key(text: str) -> tuple[KeyPart, ...]:
    """`DstAddr`, `DstAddr/24` (IPv6 then /64), `DstAddr/24/48`, `InIfBoundary+DstAddr/24`, `DstAS`."""
    parts = []
    for item in (text or "").split("+"):
        name, *prefixes = item.strip().split("/")
        if name not in COLUMNS:
            raise QueryError("bad_key", f"key: unknown column {name!r}")
        if prefixes and column_kind(name) != "ip":
            raise QueryError("bad_key", f"key: only addresses take a prefix, not {name}")
        if len(prefixes) > 2 or not all(p.isascii() and p.isdigit() for p in prefixes):
            raise QueryError("bad_key", f"key: {item.strip()!r} is COLUMN, COLUMN/v4 or COLUMN/v4/v6")
        v4 = int(prefixes[0]) if prefixes else None
        v6 = int(prefixes[1]) if len(prefixes) > 1 else (64 if prefixes else None)
        if (v4 is not None and not 0 <= v4 <= 32) or (v6 is not None and not 0 <= v6 <= 128):
            raise QueryError("bad_key", f"key: {item.strip()!r}: IPv4 prefixes are 0-32, IPv6 0-128")
        parts.append(KeyPart(name, v4, v6))
    if not parts or len({p.column for p in parts}) != len(parts):
        raise QueryError("bad_key", "key: one or more distinct columns joined by '+'")
    return tuple(parts)


@dataclass(frozen=True)
class Rule:
    name: str
    filter: str
    key: tuple[KeyPart, ...]
    measure: str
    window: int  # seconds
    threshold: float
    min_duration: int = 0  # seconds the measure stays over the threshold before it fires
    cooldown: int = 300  # seconds after an end before the same key may fire again
    max_keys: int = 10_000
    min_pps: float = 0.0  # and at least this many packets/s in the window (a ratio needs volume to mean much)

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise QueryError("bad_measure", f"measure is one of {', '.join(MEASURES)}")
        if not 1 <= self.window <= 3600:
            raise QueryError("bad_window", "window is 1 s to 1 h")
        parse_filter(self.filter)  # refuses a bad filter, naming where


def make_rule(name: str, filter: str, key: str, measure: str, window: int, threshold: float, **rest: Any) -> Rule:
    return Rule(name, filter, parse_key(key), measure, window, threshold, **rest)


# --- per-second totals --------------------------------------------------------------------------

@dataclass
class Totals:
    """What one key carried in one second (sampling applied to bytes and packets)."""

    bits: float = 0.0
    packets: float = 0.0
    flows: int = 0
    syn: float = 0.0  # TCP packets with SYN and without ACK
    tcp: float = 0.0
    sources: set[bytes] = field(default_factory=set)

    def add(self, other: Totals) -> None:
        self.bits += other.bits
        self.packets += other.packets
        self.flows += other.flows
        self.syn += other.syn
        self.tcp += other.tcp
        if len(self.sources) < DISTINCT_CAP:
            self.sources |= other.sources

    def subtract(self, other: Totals) -> None:
        self.bits -= other.bits
        self.packets -= other.packets
        self.flows -= other.flows
        self.syn -= other.syn
        self.tcp -= other.tcp


def _cut(values: np.ndarray, part: KeyPart) -> np.ndarray:
    """16-byte addresses cut to the part's prefixes (IPv4-mapped ones on their last 32 bits)."""
    raw = values.copy()
    mapped = (raw[:, :10] == 0).all(axis=1) & (raw[:, 10] == 0xFF) & (raw[:, 11] == 0xFF)
    for rows, bits in ((mapped, 96 + part.v4_prefix), (~mapped, part.v6_prefix)):
        mask = np.unpackbits(np.zeros(16, np.uint8))
        mask[:bits] = 1
        raw[rows] &= np.packbits(mask)
    return raw


def _key_array(column: pa.Array, part: KeyPart) -> pa.Array:
    """A key part's values: addresses cut to the part's prefixes (still 16 bytes), the rest as is."""
    if part.v4_prefix is None:
        return column
    raw = np.frombuffer(column.buffers()[1], np.uint8, count=16 * len(column), offset=16 * column.offset)
    cut = _cut(raw.reshape(-1, 16), part)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(column), [None, pa.py_buffer(cut.tobytes())])


def _float(values: Any) -> Any:
    """Counters as floats, unchecked: a forged 2^64-1 byte count is a huge number, not an error."""
    return pc.cast(values, pa.float64(), safe=False)


def selected(rule: Rule, batch: pa.RecordBatch | pa.Table, expression: pc.Expression | None = None) -> pa.Table:
    """The flows of `batch` the rule's filter selects (`expression`: the filter compiled once)."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if rule.filter.strip():
        table = table.filter(expression if expression is not None else arrow_filter(rule.filter))
    return table


def batch_totals(rule: Rule, batch: pa.RecordBatch | pa.Table,
                 expression: pc.Expression | None = None, filtered: bool = False) -> dict[tuple[int, tuple], Totals]:
    """(second, key) → Totals for the flows of `batch` the rule's filter selects, grouped by
    Arrow (the per-flow work is vectorised; Python sees one item per group). `expression`: the
    rule's filter compiled once (arrow_filter(rule.filter)); `filtered`: the batch is selected() already."""
    table = batch if filtered else selected(rule, batch, expression)
    if not table.num_rows:
        return {}
    table = table.combine_chunks()
    rate = _float(pc.max_element_wise(table.column("SamplingRate"), 1))
    packets = pc.multiply(_float(table.column("Packets")), rate)
    tcp = pc.equal(table.column("Proto"), TCP)
    flags = table.column("TCPFlags")
    syn = pc.and_(tcp, pc.and_(pc.not_equal(pc.bit_wise_and(flags, SYN), 0), pc.equal(pc.bit_wise_and(flags, ACK), 0)))
    zero = pa.scalar(0.0)
    columns = {
        "s": table.column("TimeReceived").cast(pa.int64()),
        **{f"k{i}": _key_array(table.column(p.column).combine_chunks(), p) for i, p in enumerate(rule.key)},
        "bits": pc.multiply(pc.multiply(_float(table.column("Bytes")), rate), 8.0),
        "packets": packets,
        "syn": pc.if_else(syn, packets, zero),
        "tcp": pc.if_else(tcp, packets, zero),
    }
    aggregations = [("bits", "sum"), ("packets", "sum"), ("bits", "count"), ("syn", "sum"), ("tcp", "sum")]
    if rule.measure == "distinct_src":
        columns["src"] = table.column("SrcAddr")
        aggregations.append(("src", "distinct"))
    keys = ["s", *(f"k{i}" for i in range(len(rule.key)))]
    table = pa.table(columns).group_by(keys, use_threads=False).aggregate(aggregations)
    weight, floor = _weight_column(rule)
    if floor > 0:
        values = pc.list_value_length(table.column(weight)) if weight == "src_distinct" else table.column(weight)
        table = table.filter(pc.greater_equal(values, floor))
    grouped = table.to_pydict()
    width = len(rule.key)
    out: dict[tuple[int, tuple], Totals] = {}
    sources = grouped.get("src_distinct") or [()] * len(grouped["s"])
    for i, second in enumerate(grouped["s"]):
        key = tuple(grouped[f"k{j}"][i] for j in range(width))
        out[(second, key)] = Totals(grouped["bits_sum"][i], grouped["packets_sum"][i], grouped["bits_count"][i],
                                    grouped["syn_sum"][i], grouped["tcp_sum"][i], set(sources[i][:DISTINCT_CAP]))
    return out


def _weight_column(rule: Rule) -> tuple[str, float]:
    """The grouped column a second's weight is read from, and the floor under which it is dropped."""
    if rule.measure == "syn_ratio":
        return "packets_sum", NEGLIGIBLE * rule.min_pps
    column = {"bps": "bits_sum", "pps": "packets_sum", "flows": "bits_count", "distinct_src": "src_distinct"}
    per_second = 1 / rule.window if rule.measure == "distinct_src" else 1
    return column[rule.measure], NEGLIGIBLE * rule.threshold * per_second


def _negligible(rule: Rule, totals: Totals) -> bool:
    column, floor = _weight_column(rule)
    value = {"packets_sum": totals.packets, "bits_sum": totals.bits, "bits_count": totals.flows,
             "src_distinct": len(totals.sources)}[column]
    return value < floor


def measure(rule: Rule, window: Totals, seconds: int | None = None) -> float:
    """The rule's measure over totals of `seconds` (default: the rule's window), per second
    where it is a rate."""
    seconds = rule.window if seconds is None else seconds
    if rule.measure == "bps":
        return window.bits / seconds
    if rule.measure == "pps":
        return window.packets / seconds
    if rule.measure == "flows":
        return window.flows / seconds
    if rule.measure == "distinct_src":
        return float(len(window.sources))
    return window.syn / window.tcp if window.tcp > 0 else 0.0


# --- the per-key state machine ------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    kind: str  # "start" or "end"; on resume, "on" (an alert on at the snapshot) and "ended" (one that
    # had ended, its routes maybe still held down) are said again
    rule: str
    key: tuple
    start: int  # first second over the threshold
    end: int | None  # first second after the last one over it (end events)
    value: float  # the measure when it fired, or its peak (end events)
    peak: float


@dataclass
class _KeyState:
    seconds: deque = field(default_factory=deque)  # (second, Totals) inside the window
    window: Totals = field(default_factory=Totals)
    status: str = "idle"  # idle, pending, active, cooldown
    since: int = 0  # pending/active: first second over; cooldown: until when
    last_over: int = 0
    peak: float = 0.0
    value: float = 0.0


class Detector:
    """One rule's keys. `add(second, key, totals)` as totals arrive; `advance(second)` evaluates
    every second up to `second` (exclusive) once and returns the events. Seconds must be advanced
    in order; totals for a second already advanced past are counted late (`late`) and dropped."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._keys: dict[tuple, _KeyState] = {}
        self._pending: dict[int, dict[tuple, Totals]] = {}
        self.clock: int | None = None  # the next second to evaluate
        self.late = 0
        self.evicted = 0

    def add(self, second: int, key: tuple, totals: Totals) -> None:
        if self.clock is not None and second < self.clock:
            self.late += 1
            return
        self._pending.setdefault(second, {}).setdefault(key, Totals()).add(totals)

    def advance(self, until: int) -> list[Event]:
        """Evaluate each second in [clock, until): window sums slide, states move. Seconds in
        which nothing can change (no key with data in its window or a pending or active state)
        are jumped over, to the next second with totals or the next end of a cooldown."""
        if self.clock is None:
            if not self._pending:
                return []
            self.clock = min(self._pending)
        events: list[Event] = []
        while self.clock < until:
            quiet = self._quiet_until()
            if quiet is not None and quiet > self.clock:
                self.clock = min(quiet, until)
                continue
            events += self._second(self.clock, self._pending.pop(self.clock, {}))
            self.clock += 1
        return events

    def _quiet_until(self) -> int | None:
        """The next second that needs evaluating when none until then does, else None."""
        if any(s.seconds or s.status in ("pending", "active") for s in self._keys.values()):
            return None
        wakes = [s.since for s in self._keys.values() if s.status == "cooldown"]
        wakes += [min(self._pending)] if self._pending else []
        return min(wakes) if wakes else 2**62

    def _second(self, second: int, arrived: dict[tuple, Totals]) -> Iterator[Event]:
        for key, totals in arrived.items():
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _KeyState()
                self._bound()
            state.seconds.append((second, totals))
            state.window.add(totals)
        for key in list(self._keys):
            state = self._keys[key]
            while state.seconds and state.seconds[0][0] <= second - self.rule.window:
                state.window.subtract(state.seconds.popleft()[1])
            if self.rule.measure == "distinct_src":  # sets do not subtract: rebuilt from the window's seconds
                state.window.sources = set().union(*(t.sources for _, t in state.seconds)) if state.seconds else set()
            yield from self._step(key, state, second)
            if state.status == "idle" and not state.seconds:
                del self._keys[key]

    def _step(self, key: tuple, state: _KeyState, second: int) -> Iterator[Event]:
        rule = self.rule
        state.value = measure(rule, state.window) if state.seconds else 0.0
        over = state.value >= rule.threshold and state.window.packets / rule.window >= rule.min_pps
        if state.status == "cooldown" and second >= state.since:
            state.status = "idle"
        if state.status == "idle" and over:
            state.status, state.since, state.peak = "pending", second, 0.0
        if state.status == "pending":
            if not over:
                state.status = "idle"
            else:
                state.peak = max(state.peak, state.value)
                state.last_over = second
                if second - state.since + 1 >= max(1, rule.min_duration):
                    state.status = "active"
                    yield Event("start", rule.name, key, state.since, None, state.value, state.peak)
        elif state.status == "active":
            if over:
                state.peak = max(state.peak, state.value)
                state.last_over = second
            elif second - state.last_over >= rule.window:
                yield Event("end", rule.name, key, state.since, state.last_over + 1, state.peak, state.peak)
                state.status, state.since = "cooldown", state.last_over + 1 + rule.cooldown

    def _bound(self) -> None:
        """Over max_keys: evict the quietest idle keys down to 90 % of it in one pass (keys
        that are pending, on or cooling down are kept)."""
        if len(self._keys) <= self.rule.max_keys:
            return
        idle = sorted((measure(self.rule, s.window), i, k) for i, (k, s) in enumerate(self._keys.items())
                      if s.status == "idle")
        for _, _, key in idle[:len(self._keys) - int(self.rule.max_keys * 0.9)]:
            del self._keys[key]
            self.evicted += 1

    def states(self) -> list[tuple[tuple, _KeyState]]:
        return list(self._keys.items())

    @property
    def active(self) -> list[tuple]:
        return [k for k, s in self._keys.items() if s.status == "active"]


def feed(detector: Detector, totals: dict[tuple[int, tuple], Totals]) -> None:
    for (second, key), value in totals.items():
        detector.add(second, key, value)


# --- the backtest's totals, from the store ------------------------------------------------------

def totals_sql(rule: Rule, database: str, start: int, end: int) -> tuple[str, dict[str, Any]]:
    """Per (second, key) totals of raw flows in [start, end) — the same figures batch_totals
    makes from flow batches — as SQL with bound parameters."""
    parsed = parse_filter(rule.filter)
    keys = ", ".join(f"{_key_sql(p)} AS k{i}" for i, p in enumerate(rule.key))
    names = ", ".join(f"k{i}" for i in range(len(rule.key)))
    sources = (f"groupUniqArray({DISTINCT_CAP})(hex(SrcAddr))" if rule.measure == "distinct_src"
               else "CAST([], 'Array(String)')")
    rate = "if(SamplingRate = 0, 1, SamplingRate)"
    syn = f"Proto = {TCP} AND bitAnd(TCPFlags, {SYN}) != 0 AND bitAnd(TCPFlags, {ACK}) = 0"
    sql = (f"SELECT toUInt32(TimeReceived) AS s, {keys}, sum(Bytes * {rate} * 8), sum(Packets * {rate}), count(), "
           f"sumIf(Packets * {rate}, {syn}), sumIf(Packets * {rate}, Proto = {TCP}), {sources} "
           f"FROM `{database}`.`flows` WHERE TimeReceived >= toDateTime({{bt_from:UInt32}}) "
           f"AND TimeReceived < toDateTime({{bt_to:UInt32}}) AND {parsed.sql} GROUP BY s, {names} ORDER BY s")
    return sql, {"bt_from": start, "bt_to": end, **parsed.parameters}


def _key_sql(part: KeyPart) -> str:
    """A key part as SQL giving the value batch_totals gives: addresses as hex of their 16 bytes
    (cut to the prefix), enums as their codes, the rest as stored."""
    column = f"`{part.column}`"
    kind = column_kind(part.column)
    if kind == "ip":
        if part.v4_prefix is None:
            return f"hex({column})"
        mapped = f"{column} BETWEEN toIPv6('::ffff:0.0.0.0') AND toIPv6('::ffff:255.255.255.255')"
        return (f"hex(tupleElement(IPv6CIDRToRange({column}, toUInt8(if({mapped}, {96 + part.v4_prefix}, "
                f"{part.v6_prefix}))), 1))")
    if kind == "enum":
        return f"CAST({column} AS Int16)"
    return column


def rows_totals(rule: Rule, rows: Iterable[tuple]) -> dict[tuple[int, tuple], Totals]:
    """The backtest query's rows as batch_totals' mapping."""
    width = len(rule.key)
    ips = [column_kind(p.column) == "ip" for p in rule.key]
    out: dict[tuple[int, tuple], Totals] = {}
    for row in rows:
        second = int(row[0])
        key = tuple(bytes.fromhex(v) if ip else v for v, ip in zip(row[1:1 + width], ips))
        bits, packets, flows, syn, tcp, sources = row[1 + width:]
        totals = Totals(float(bits), float(packets), int(flows), float(syn), float(tcp),
                        {bytes.fromhex(h) for h in sources})
        if not _negligible(rule, totals):
            out[(second, key)] = totals
    return out


# --- what an alert says -------------------------------------------------------------------------

TOP = 5


def key_text(rule: Rule, key: tuple) -> str:
    """A key as people read it: parts joined by '+', addresses as text (with the key's prefix)."""
    from flows.mitigation import destination

    parts = []
    for part, value in zip(rule.key, key):
        if column_kind(part.column) == "ip":
            parts.append(destination(value, part.v4_prefix, part.v6_prefix) if part.v4_prefix is not None
                         else str(_address(value)))
        elif column_kind(part.column) == "enum":
            from flows.filter import enum_codes
            parts.append(next((label for label, code in enum_codes(part.column).items() if code == value), str(value)))
        else:
            parts.append(value.decode(errors="replace").rstrip("\0") if isinstance(value, bytes) else str(value))
    return "+".join(parts)


def _address(value: bytes) -> Any:
    import ipaddress

    ip = ipaddress.IPv6Address(value)
    return ip.ipv4_mapped or ip


def signature(rule: Rule, table: pa.Table, key: tuple, expression: pc.Expression | None = None,
              filtered: bool = False) -> dict[str, list]:
    """The top sources, source ports and protocols (by bits) of a key's flows in `table`:
    what an alert says about the attack, and what a FlowSpec route can match."""
    if not filtered:
        table = selected(rule, table, expression)
    for i, part in enumerate(rule.key):
        column = _key_array(table.column(part.column).combine_chunks(), part)
        value = pa.scalar(key[i], column.type)
        table = table.filter(pc.equal(column, value))
    if not table.num_rows:
        return {"sources": [], "source_ports": [], "protocols": []}
    bits = pc.multiply(_float(table.column("Bytes")), _float(pc.max_element_wise(table.column("SamplingRate"), 1)))
    def top(name: str) -> list:
        grouped = pa.table({"v": table.column(name), "b": bits}).group_by("v").aggregate([("b", "sum")])
        ordered = grouped.sort_by([("b_sum", "descending"), ("v", "ascending")]).column("v").to_pylist()[:TOP]
        return ordered
    return {"sources": [str(_address(v)) for v in top("SrcAddr")], "source_ports": top("SrcPort"),
            "protocols": top("Proto")}


def signature_sql(rule: Rule, database: str, key: tuple, start: int, end: int) -> tuple[str, dict[str, Any]]:
    """The top sources, source ports and protocols of a key's flows in [start, end) from raw
    flows — what `signature` finds in batches — as one query (three arrays)."""
    parsed = parse_filter(rule.filter)
    parameters: dict[str, Any] = {"sg_from": start, "sg_to": end, **parsed.parameters}
    conditions = []
    for i, (part, value) in enumerate(zip(rule.key, key)):
        parameters[f"sg_k{i}"] = value.hex().upper() if isinstance(value, bytes) and column_kind(part.column) == "ip" \
            else value
        kind = "String" if column_kind(part.column) in ("ip", "string") else "Int64"
        conditions.append(f"{_key_sql(part)} = {{sg_k{i}:{kind}}}")
    bits = "Bytes * if(SamplingRate = 0, 1, SamplingRate)"
    where = (f"TimeReceived >= toDateTime({{sg_from:UInt32}}) AND TimeReceived < toDateTime({{sg_to:UInt32}}) "
             f"AND {parsed.sql} AND {' AND '.join(conditions)}")

    def top(column: str) -> str:  # by bits, ties by value: as signature() orders them
        return (f"(SELECT arraySlice(arrayMap(t -> t.2, arraySort(t -> (-t.1, t.2), groupArray((b, v)))), 1, {TOP}) "
                f"FROM (SELECT `{column}` AS v, sum({bits}) AS b FROM `{database}`.`flows` WHERE {where} GROUP BY v))")
    sources = f"arrayMap(x -> replaceRegexpOne(IPv6NumToString(x), '^::ffff:', ''), {top('SrcAddr')})"
    return f"SELECT {sources}, {top('SrcPort')}, {top('Proto')}", parameters
