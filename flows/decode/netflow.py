"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) messages: walking sets, learning templates.

The walk is the only per-datagram Python: it reads the header, steps over sets by their
length field (exporters such as softflowd do not pad sets to 4 bytes), learns templates,
applies options records (sampling, system init time) at once, and hands each data set to the
chunk, which decodes all sets of one template together (see records.py).
"""

from __future__ import annotations

import struct

from flows.decode import metrics
from flows.decode.state import ExporterState
from flows.decode.templates import REVERSE_PEN, SCOPE_PEN, Template, options_values

V9_HEADER = struct.Struct("!HHIIII")  # version, count, sysUptime, unix secs, sequence, source id
IPFIX_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, domain
SET_HEADER = struct.Struct("!HH")
IPFIX_RANDOM_SAMPLING = 2


def walk_v9(chunk, state: ExporterState, data: bytes, received: float) -> None:
    """Decode one NetFlow v9 datagram into the chunk."""
    if len(data) < V9_HEADER.size:
        metrics.error("truncated")
        return
    _, _, uptime, secs, _, domain = V9_HEADER.unpack_from(data)
    meta = (secs * 1000, uptime, int(received))
    _walk_sets(chunk, state, data, V9_HEADER.size, len(data), 9, domain, meta, received)


def walk_ipfix(chunk, state: ExporterState, data: bytes, received: float) -> None:
    """Decode one IPFIX message into the chunk (trailing bytes past its length are ignored)."""
    if len(data) < IPFIX_HEADER.size:
        metrics.error("truncated")
        return
    _, length, export_time, _, domain = IPFIX_HEADER.unpack_from(data)
    if length < IPFIX_HEADER.size:
        metrics.error("bad_length")
        return
    if length > len(data):
        metrics.error("truncated")
        length = len(data)
    meta = (export_time * 1000, -1, int(received))
    _walk_sets(chunk, state, data, IPFIX_HEADER.size, length, 10, domain, meta, received)


def _walk_sets(chunk, state: ExporterState, data: bytes, offset: int, end: int, version: int,
               domain: int, meta: tuple, received: float) -> None:
    """Step over the sets of one message by their length field.

    Data sets of a fixed-length template take an inlined fast path (softflowd, for one, sends
    one set per flow record, so this loop runs about once per flow): the record bytes are
    sliced straight into the template's group and counted per message, not per set.
    """
    template_set, options_set = (0, 1) if version == 9 else (2, 3)
    unpack = SET_HEADER.unpack_from
    templates = state.templates
    last_id, record_len, append, touched = -1, 0, None, {}
    while end - offset >= 4:
        set_id, length = unpack(data, offset)
        if length < 4:
            metrics.error("bad_length")  # a zero length would loop forever: stop this datagram
            break
        following = offset + length
        if following > end:
            metrics.error("truncated")  # decode the whole records the cut set still holds
            following = end
        if set_id >= 256:
            if set_id != last_id:
                template = templates.get((version, domain, set_id))
                if template is None or template.options or template.varlen:
                    last_id = -1
                    chunk.data_set(state, (version, domain, set_id), data[offset + 4:following], meta,
                                   received)
                    offset = following
                    continue
                group = chunk.group(state, template, version, domain)
                last_id, record_len, append = set_id, template.record_len, group.bodies.append
            count = (following - offset - 4) // record_len
            if count:
                append(data[offset + 4:offset + 4 + count * record_len])
                touched[group] = touched.get(group, 0) + count
        elif set_id == template_set or set_id == options_set:
            last_id = -1  # the set may redefine the template in use
            _template_set(chunk, state, version, domain, set_id, data[offset + 4:following],
                          options=set_id == options_set)
        else:
            metrics.error("unsupported")
        offset = following
    for group, count in touched.items():
        group.counts.append(count)
        group.metas.append(meta)


def _template_set(chunk, state: ExporterState, version: int, domain: int, set_id: int, body: bytes,
                  options: bool) -> None:
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
        template = Template(version, fields, options)
        if tid < 256 or not template.valid:
            metrics.error("bad_template")
            continue
        state.learn(key, template)
        learnt.append((key, template))
        metrics.TEMPLATES_BY_KIND["netflow_v9" if version == 9 else "ipfix"].inc()
        for held_body, held_meta in state.take_held(key):
            chunk.data_set(state, key, held_body, held_meta, None)
    state.remember_template_set(seen_key, tuple(learnt))


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
                  body: bytes) -> None:
    """Read options data records: sampling rates (per exporter or per sampler) and boot time."""
    records, count = template.records(body)
    for row in options_values(template, records, count):
        metrics.OPTIONS_RECORDS.inc()
        rate = sampling_rate_of(row)
        if rate:
            sampler = row.get((0, 48), row.get((0, 302)))
            if sampler is None:
                state.set_domain_rate((version, domain), rate)
            else:
                state.set_sampler_rate((version, domain, sampler), rate)
        if (0, 160) in row:
            state.set_system_init((version, domain), row[(0, 160)])


def sampling_rate_of(row: dict[tuple[int, int], int]) -> int:
    """1-in-N rate from sampling elements: interval (34/50), packet interval/space (305/306),
    size/population (309/310) or probability (311); 0 when none says."""
    for key in ((0, 34), (0, 50)):
        if row.get(key):
            return row[key]
    interval = row.get((0, 305))
    if interval:
        return (interval + row.get((0, 306), 0)) // interval
    size, population = row.get((0, 309)), row.get((0, 310))
    if size and population:
        return max(1, population // size)
    probability = row.get((0, 311))
    if probability:
        p = struct.unpack("!d", probability.to_bytes(8, "big"))[0]
        if 0 < p <= 1:
            return max(1, round(1 / p))
    return 0


__all__ = ["walk_v9", "walk_ipfix", "apply_options", "sampling_rate_of", "REVERSE_PEN"]
