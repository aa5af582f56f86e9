"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) messages: walking sets, learning templates.

All v9/IPFIX datagrams of a decode call are walked together (walk.lock_step): headers and set
headers are read with numpy from one joined buffer, stepping over sets by their length field
(exporters such as softflowd do not pad sets to 4 bytes). Template sets are then applied in
datagram order (recognised by their bytes when already seen), options records (sampling,
system init time) at once, and the records of each template are gathered from the buffer
together and decoded as one structured array (see records.py).
"""

from __future__ import annotations

import struct

import numpy as np

from flows.decode import limits, metrics
from flows.decode.callbacks import ChunkCallbacks
from flows.decode.columns import strided_view
from flows.decode.elements import IE
from flows.decode.state import ExporterState
from flows.decode.templates import REVERSE_PEN, SCOPE_PEN, Template, options_values
from flows.decode.walk import count, joined, lock_step

V9_HEADER = struct.Struct("!HHIIII")  # version, count, sysUptime, unix secs, sequence, source id
IPFIX_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, domain
SET_HEADER = struct.Struct("!HH")
IPFIX_RANDOM_SAMPLING = 2
MAX_RATE = (1 << 64) - 1  # SamplingRate is a UInt64
MAX_TIME_MS = 1 << 62  # times are int64 ms: a boot time must leave room for the uptime added to it
_PAD = 24  # zero bytes after the joined datagrams: header reads of a short datagram stay inside


class NetflowQueue:
    """NetFlow v9 and IPFIX datagrams queued during one decode call (walked together at its end).
    The chunk appends to the three lists directly: this runs once per datagram."""

    __slots__ = ("payloads", "states", "received", "origins", "decapsulation")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.states: list[ExporterState] = []
        self.received: list[float] = []
        self.origins: list[int] = []
        self.decapsulation: list[int] = []  # per datagram, its listener's mode (frames.DECAPSULATIONS)


class _Sets:
    """Every set of the queued messages, in datagram order, as arrays: datagram index, offset in
    the joined buffer, set id, end offset (cut to the message end) and domain index (into
    `domain_of`: (state, version, source id / observation domain)); per datagram: export time
    (ms), sysUptime (v9; -1 for IPFIX) and receive time (s, as given and whole)."""

    def __init__(self, buffer: bytes, datagram: np.ndarray, offset: np.ndarray, set_id: np.ndarray,
                 following: np.ndarray, dom: np.ndarray, domain_of: list, export_ms: np.ndarray,
                 uptime: np.ndarray, received_at: list[float], origins: list[int],
                 decapsulation: list[int]) -> None:
        self.buffer, self.datagram, self.offset, self.set_id, self.following = \
            buffer, datagram, offset, set_id, following
        self.dom, self.domain_of = dom, domain_of
        self.export_ms, self.uptime, self.received_at = export_ms, uptime, received_at
        self.received = np.array(received_at, np.float64).astype(np.int64)
        self.origin = np.array(origins, np.int64)
        self.decapsulation = np.array(decapsulation, np.int64)
        self.budget = RowBudget(len(received_at))

    def body(self, i: int) -> bytes:
        return self.buffer[int(self.offset[i]) + 4:int(self.following[i])]

    def meta(self, i: int) -> tuple[int, int, int, int]:
        d = self.datagram[i]
        return (int(self.export_ms[d]), int(self.uptime[d]), int(self.received[d]), int(self.origin[d]),
                int(self.decapsulation[d]))


class RowBudget:
    """What is left of each datagram's MAX_ROWS_PER_DATAGRAM as its sets are taken."""

    def __init__(self, datagrams: int) -> None:
        self.left = np.full(datagrams, limits.MAX_ROWS_PER_DATAGRAM, np.int64)
        # records read in Python one by one (variable-length, options) have a budget of their own
        self.variable_left = np.full(datagrams, limits.MAX_VARIABLE_RECORDS_PER_DATAGRAM, np.int64)

    def take_set(self, chunk: ChunkCallbacks, state: ExporterState, key: tuple, body: bytes, meta: tuple,
                 received: float | None, datagram: int) -> None:
        """Decode (or hold) one data set on its own, charged to `datagram`: its flows to the
        datagram's rows; variable-length and options records also to the records read one by one."""
        template = state.templates.get(key)
        options = template is not None and template.options
        walked = template is not None and (template.varlen or options)
        most = int(self.variable_left[datagram]) if options else int(self.left[datagram])
        if walked:
            most = min(most, int(self.variable_left[datagram]))
        taken = chunk.data_set(state, key, body, meta, received, most)
        if not options:
            self.left[datagram] -= taken
        if walked:
            self.variable_left[datagram] -= taken

    def take(self, datagram: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Records allowed of each set (in datagram order), its datagram's budget spent in order."""
        if not counts.size:
            return counts
        # records of the earlier sets of the same datagram in this call
        order = np.argsort(datagram, kind="stable")
        d, c = datagram[order], counts[order]
        total = np.cumsum(c)
        run_start = np.concatenate(([True], d[1:] != d[:-1]))
        before = total - c - np.maximum.accumulate(np.where(run_start, total - c, 0))
        allowed = np.clip(self.left[d] - before, 0, c)
        if (allowed < c).any():
            metrics.error("limit", int(np.count_nonzero(allowed < c)))
        np.subtract.at(self.left, d, allowed)
        out = np.empty_like(counts)
        out[order] = allowed
        return out


def walk_netflow(queue: NetflowQueue, chunk: ChunkCallbacks) -> None:
    """Walk the sets of all queued v9/IPFIX messages at once and queue their records in the chunk.

    The datagrams are joined into one buffer and walked in lock step with numpy: step k reads
    the k-th set header of every message still open, so the Python cost is per step (about
    the number of sets in the largest message), not per datagram or per set. Template sets are
    then applied in datagram order; data sets between two template sets that change anything
    are decoded per template with one gather of their records from the buffer.
    """
    sets = _walk_sets(queue)
    if sets is None:
        return
    version = np.array([v for _, v, _ in sets.domain_of])[sets.dom]
    set_id = sets.set_id
    template_sets = np.where(version == 9, set_id <= 1, (set_id == 2) | (set_id == 3))
    data_sets = set_id >= 256
    unsupported = int(np.count_nonzero(~template_sets & ~data_sets))
    if unsupported:
        metrics.error("unsupported", unsupported)
    position = 0
    buffer = sets.buffer
    budgets: dict[int, TemplateBudget] = {}  # per datagram
    rows = np.nonzero(template_sets)[0]
    for index, dom, sid, start, end in zip(rows.tolist(), sets.dom[rows].tolist(), set_id[rows].tolist(),
                                           sets.offset[rows].tolist(), sets.following[rows].tolist()):
        body = buffer[start + 4:end]
        state, ver, domain = sets.domain_of[dom]
        if state.known_template_set((ver, domain, sid, body)):  # (also marks them recently used)
            continue
        _data_sets(chunk, sets, position + np.nonzero(data_sets[position:index])[0])
        datagram = int(sets.datagram[index])
        _guarded_template_set(chunk, state, ver, domain, sid, body, options=sid in (1, 3),
                              budget=budgets.setdefault(datagram, TemplateBudget()), rows=sets.budget,
                              datagram=datagram, origin=int(sets.origin[datagram]),
                              decapsulation=int(sets.decapsulation[datagram]))
        position = index
    _data_sets(chunk, sets, position + np.nonzero(data_sets[position:])[0])


def _walk_sets(queue: NetflowQueue) -> _Sets | None:
    n = len(queue.payloads)
    buffer, starts, lengths = joined(queue.payloads, _PAD)
    be16, be32 = strided_view(buffer, ">u2"), strided_view(buffer, ">u4")
    ipfix = be16[starts] == 10
    some = int(np.count_nonzero(ipfix))
    metrics.DATAGRAMS_BY_KIND["ipfix"].inc(some)
    metrics.DATAGRAMS_BY_KIND["netflow_v9"].inc(n - some)

    def per_version(for_ipfix: int, for_v9: int):
        """A header field's position (or size) by version; a number when all are alike."""
        return for_v9 if some == 0 else for_ipfix if some == n else np.where(ipfix, for_ipfix, for_v9)

    header = per_version(IPFIX_HEADER.size, V9_HEADER.size)
    ends = starts + lengths
    message = be16[starts + 2].astype(np.int64)  # IPFIX: message length
    short = lengths < header
    bad = ipfix & ~short & (message < IPFIX_HEADER.size)
    cut = ipfix & ~short & ~bad & (message > lengths)
    count("truncated", short | cut)
    count("bad_length", bad)
    if some:
        ends = np.where(ipfix & ~cut, starts + message, ends)
    export_ms = be32[starts + per_version(4, 8)].astype(np.int64) * 1000
    uptime = np.where(ipfix, -1, be32[starts + 4].astype(np.int64)) if some else be32[starts + 4].astype(np.int64)
    domain = be32[starts + per_version(12, 16)].astype(np.int64)
    # One index per (exporter, version, source id / observation domain) in the chunk.
    state_ids: dict[ExporterState, int] = {}
    ids = [state_ids.setdefault(state, len(state_ids)) for state in queue.states]
    states = list(state_ids)
    keys = (np.array(ids, np.int64) << 33) | (ipfix.astype(np.int64) << 32) | domain
    unique_keys, domain_index = np.unique(keys, return_inverse=True)
    domain_of = [(states[k >> 33], 10 if (k >> 32) & 1 else 9, k & 0xFFFFFFFF) for k in unique_keys.tolist()]
    open_ = np.nonzero(~short & ~bad)[0]
    first_set = starts[open_] + (header if np.isscalar(header) else header[open_])
    datagram, offset, following = lock_step(buffer, open_, first_set, ends[open_], header=4, inclusive=True,
                                            limit=limits.MAX_SETS_PER_DATAGRAM)
    if not offset.size:
        return None
    return _Sets(buffer, datagram, offset, be16[offset].astype(np.int64), following,
                 domain_index[datagram], domain_of, export_ms, uptime, queue.received, queue.origins,
                 queue.decapsulation)


def _data_sets(chunk: ChunkCallbacks, sets: _Sets, rows: np.ndarray) -> None:
    """Queue the data sets `rows` (indices into sets) under their templates, one gather per template."""
    if not rows.size:
        return
    keys = sets.dom[rows] * 65536 + sets.set_id[rows]
    order = np.argsort(keys, kind="stable")  # grouped by template, datagram order kept within
    rows, keys = rows[order], keys[order]
    bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts_of_group = np.concatenate(([0], bounds))
    groups = sorted(zip(order[starts_of_group].tolist(), starts_of_group.tolist(),
                        np.append(bounds, len(rows)).tolist()))  # in order of first appearance
    one_by_one = []
    budget = sets.budget
    for _, begin, end in groups:
        key = int(keys[begin])
        state, version, domain = sets.domain_of[key >> 16]
        template_key = (version, domain, key & 0xFFFF)
        these = rows[begin:end]
        template = state.templates.get(template_key)
        if template is None or template.options or template.varlen:
            # (an empty set holds no record: nothing to decode or to hold for its template)
            nonempty = these[sets.following[these] - sets.offset[these] > 4]
            one_by_one.extend((row, state, template_key) for row in nonempty.tolist())
            continue
        record_len = template.record_len
        offsets = sets.offset[these] + 4
        counts = budget.take(sets.datagram[these], (sets.following[these] - offsets) // record_len)
        if (counts == 1).all():  # one record per set (softflowd)
            starts, datagram = offsets, sets.datagram[these]
        else:
            total = int(counts.sum())
            if not total:
                continue
            set_of_record = np.repeat(np.arange(len(these)), counts)
            first_record = np.cumsum(counts) - counts
            starts = offsets[set_of_record] + (np.arange(total) - first_record[set_of_record]) * record_len
            datagram = sets.datagram[these][set_of_record]
        records = strided_view(sets.buffer, f"V{record_len}")[starts].view(template.dtype)
        chunk.group(state, template, version, domain).pieces.append(
            (records, sets.export_ms[datagram], sets.uptime[datagram], sets.received[datagram],
             sets.origin[datagram], sets.decapsulation[datagram]))
    # Rare: missing template (held, oldest dropped first), options data, variable-length
    # records: one set at a time, in datagram order.
    for row, state, template_key in sorted(one_by_one, key=lambda item: item[0]):
        datagram = int(sets.datagram[row])
        try:
            budget.take_set(chunk, state, template_key, sets.body(row), sets.meta(row), sets.received_at[datagram],
                            datagram)
        except Exception:  # one bad set costs only itself, not the other sets of this call
            metrics.error("malformed")


class TemplateBudget:
    """Template records one datagram may have parsed, and new templates it may have built
    (building one costs ~50 µs: compiling its record layout). Unchanged templates cost only the
    parse, so a router sending more than MAX_NEW_TEMPLATES_PER_DATAGRAM at once has the rest
    learnt from its next refreshes."""

    __slots__ = ("parsed", "fields", "built")

    def __init__(self) -> None:
        self.parsed = self.fields = self.built = 0

    def exhausted(self) -> bool:
        return (self.parsed >= limits.MAX_TEMPLATE_RECORDS_PER_DATAGRAM
                or self.fields >= limits.MAX_TEMPLATE_FIELDS_PER_DATAGRAM
                or self.built >= limits.MAX_NEW_TEMPLATES_PER_DATAGRAM)


def _guarded_template_set(chunk: ChunkCallbacks, state: ExporterState, version: int, domain: int, set_id: int,
                          body: bytes, options: bool, budget: TemplateBudget, rows: RowBudget, datagram: int,
                          origin: int, decapsulation: int) -> None:
    try:
        _template_set(chunk, state, version, domain, set_id, body, options, budget, rows, datagram, origin,
                      decapsulation)
    except Exception:  # a parser bug must not stop the dataflow: count it, keep going
        metrics.error("malformed")


def _template_set(chunk: ChunkCallbacks, state: ExporterState, version: int, domain: int, set_id: int, body: bytes,
                  options: bool, budget: TemplateBudget, rows: RowBudget, datagram: int, origin: int,
                  decapsulation: int) -> None:
    seen_key = (version, domain, set_id, body)
    if state.known_template_set(seen_key):
        return
    parse = _parse_v9_template if version == 9 else _parse_ipfix_template
    if version == 9 and options:
        parse = _parse_v9_options_template
    learnt, offset = [], 0
    while len(body) - offset >= 4:
        tid = SET_HEADER.unpack_from(body, offset)[0]
        if tid == 0:
            break  # padding
        fields_announced = _field_count(body, offset, version, options)
        if fields_announced > limits.MAX_TEMPLATE_FIELDS:
            metrics.error("limit")  # parsing it would cost more than any real template does
            break
        if budget.exhausted():
            metrics.error("limit")
            return  # not remembered as seen: what is left is read from the next refresh
        budget.parsed += 1
        budget.fields += fields_announced
        result = parse(body, offset, options)
        if result is None:
            metrics.error("truncated")
            break
        fields, offset = result
        key = (version, domain, tid)
        if not fields:  # IPFIX template withdrawal (field count 0)
            if tid == set_id:
                state.withdraw_all(version, domain, options)
            else:
                state.withdraw(key)
            continue
        current = state.templates.get(key)
        if current is not None and current.fields == fields and current.options == options:
            state.templates.move_to_end(key)  # a refresh of a template we hold: nothing to build
            learnt.append((key, current))
            continue
        budget.built += 1
        template = Template(version, fields, options)
        if tid < 256 or not template.valid:
            metrics.error("bad_template")
            continue
        state.learn(key, template)
        learnt.append((key, template))
        metrics.TEMPLATES_BY_KIND["netflow_v9" if version == 9 else "ipfix"].inc()
        # Released rows count against this datagram, and are its rows (their origin is its own).
        for held_body, held_meta in state.take_held(key):
            rows.take_set(chunk, state, key, held_body, (*held_meta[:3], origin, decapsulation), None, datagram)
    state.remember_template_set(seen_key, tuple(learnt))


def _field_count(body: bytes, offset: int, version: int, options: bool) -> int:
    """How many fields the template record at `offset` announces (0 when too short to say)."""
    if version == 9 and options:
        if len(body) - offset < 6:
            return 0
        _, scope_len, option_len = struct.unpack_from("!HHH", body, offset)
        return (scope_len + option_len) // 4
    return SET_HEADER.unpack_from(body, offset)[1]


def _parse_v9_template(body: bytes, offset: int, options: bool):
    tid, count = SET_HEADER.unpack_from(body, offset)
    offset += 4
    end = offset + 4 * count
    if end > len(body) or count == 0:
        return None
    raw = struct.unpack_from(f"!{2 * count}H", body, offset)
    fields = tuple((raw[i], 0, raw[i + 1]) for i in range(0, 2 * count, 2))
    return fields, end


def _parse_v9_options_template(body: bytes, offset: int, options: bool):
    if len(body) - offset < 6:
        return None
    tid, scope_len, option_len = struct.unpack_from("!HHH", body, offset)
    offset += 6
    end = offset + scope_len + option_len
    if end > len(body) or scope_len % 4 or option_len % 4 or scope_len + option_len == 0:
        return None
    raw = struct.unpack_from(f"!{(scope_len + option_len) // 2}H", body, offset)
    scopes = scope_len // 2
    fields = tuple((raw[i], SCOPE_PEN if i < scopes else 0, raw[i + 1]) for i in range(0, len(raw), 2))
    # v9 options template records are padded to 4 bytes within the set
    return fields, end


def _parse_ipfix_template(body: bytes, offset: int, options: bool):
    tid, count = SET_HEADER.unpack_from(body, offset)
    offset += 4
    if options and count:
        if len(body) - offset < 2:
            return None
        offset += 2  # scope field count: IPFIX scope fields are ordinary elements
    fields = []
    for _ in range(count):
        if len(body) - offset < 4:
            return None
        ie, length = SET_HEADER.unpack_from(body, offset)
        offset += 4
        pen = 0
        if ie & 0x8000:
            if len(body) - offset < 4:
                return None
            pen = int.from_bytes(body[offset:offset + 4], "big")
            offset += 4
            ie &= 0x7FFF
        fields.append((ie, pen, length))
    return tuple(fields), offset


def apply_options(state: ExporterState, template: Template, version: int, domain: int,
                  body: bytes, most: int = limits.MAX_VARIABLE_RECORDS_PER_DATAGRAM) -> int:
    """Read options data records (at most `most`): sampling rates (per exporter or per sampler)
    and boot time. How many were read."""
    records, count = template.records(body, most)
    for row in options_values(template, records, count):
        metrics.OPTIONS_RECORDS.inc()
        # Values kept as state must fit the columns' integers, or every later batch of this
        # exporter would fail: a rate is capped, an impossible boot time is ignored.
        rate = min(sampling_rate_of(row, _probability_width(template)), MAX_RATE)
        if rate:
            sampler = row.get((0, IE.samplerId), row.get((0, IE.selectorId)))
            if sampler is not None and sampler >> 64:  # an id no sampler has: it would bloat the state
                metrics.error("implausible")
                continue
            if sampler is None:
                state.set_domain_rate((version, domain), rate)
            else:
                state.set_sampler_rate((version, domain, sampler), rate)
        boot = row.get((0, IE.systemInitTimeMilliseconds), MAX_TIME_MS)
        if boot < MAX_TIME_MS:
            state.set_system_init((version, domain), boot)
    return count


def _probability_width(template: Template) -> int:
    """Bytes of the template's samplingProbability (IE 311): a float64, or reduced to a float32
    (RFC 7011 section 6.2)."""
    return next((length for ie, pen, length in template.fields if ie == IE.samplingProbability and pen == 0), 8)


def sampling_rate_of(row: dict[tuple[int, int], int], probability_width: int = 8) -> int:
    """1-in-N rate from sampling elements: interval (34/50), packet interval/space (305/306),
    size/population (309/310) or probability (311, `probability_width` bytes); 0 when none says."""
    for key in ((0, IE.samplingInterval), (0, IE.samplerRandomInterval)):
        if row.get(key):
            return row[key]
    interval = row.get((0, IE.samplingPacketInterval))
    if interval:
        return (interval + row.get((0, IE.samplingPacketSpace), 0)) // interval
    size, population = row.get((0, IE.samplingSize)), row.get((0, IE.samplingPopulation))
    if size and population:
        return max(1, population // size)
    probability = row.get((0, IE.samplingProbability))
    if probability:
        if probability_width == 4:
            p = struct.unpack("!f", probability.to_bytes(4, "big"))[0]
        elif probability_width == 8:
            p = struct.unpack("!d", probability.to_bytes(8, "big"))[0]
        else:
            return 0  # no float has another width
        # Below 1/MAX_RATE (a denormal among them, whose inverse is inf) no rate fits the column.
        if 1 / MAX_RATE <= p <= 1:
            return max(1, round(1 / p))
    return 0


__all__ = ["NetflowQueue", "walk_netflow", "apply_options", "sampling_rate_of", "REVERSE_PEN"]
