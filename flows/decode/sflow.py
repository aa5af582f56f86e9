"""sFlow v5 datagrams: flow samples → flow columns, counter samples counted.

The datagrams of a decode call are joined into one buffer and walked together with numpy, in
lock step like NetFlow v9/IPFIX sets (netflow.py): step k reads the k-th sample of every
datagram, then step k the k-th record of every flow sample, so the Python cost is per step,
not per sample. Fixed records (raw packet header, extended switch) are read with gathers;
the variable ones (extended router/gateway, sampled IPv4/IPv6) are rarer and read in Python.
The sampled packet headers are then parsed all together: Ethernet, 802.1Q/802.1ad tags, an
MPLS stack, IPv4 or IPv6 (with the common extension headers), and TCP/UDP ports, TCP flags or
ICMP type/code.

Bytes semantics (same as NetFlow's): the L3 length of the sampled packet — the IP total length
read from its header, or, when the header was cut before it or the packet is not IP, the frame
length less the link-layer header and the bytes the agent stripped (e.g. the FCS). Each sample
is one packet; SamplingRate is the sample's rate. The exporter is the agent address.
"""

from __future__ import annotations

import struct

import numpy as np

from flows.decode import limits, metrics
from flows.decode.columns import ORIGIN, V4_MAPPED_PREFIX, ListColumn, strided_view, take_rows
from flows.decode.forwarding import sflow_discard_status
from flows.decode.frames import HEADER_BYTES, NONE, ROW, Headers, parse
from flows.decode.walk import count, joined, lock_step

U32 = struct.Struct("!I")
U32x2 = struct.Struct("!II")
U32x4 = struct.Struct("!IIII")
IPV4_RECORD = struct.Struct("!II4s4sIIII")
IPV6_RECORD = struct.Struct("!II16s16sIIII")
_PAD = ROW + 64  # zero bytes after the joined datagrams: fixed-size reads never leave the buffer
FLOW_SAMPLE, COUNTER_SAMPLE, EXPANDED_FLOW_SAMPLE, EXPANDED_COUNTER_SAMPLE = 1, 2, 3, 4
RAW_HEADER, SAMPLED_IPV4, SAMPLED_IPV6 = 1, 3, 4
EXTENDED_SWITCH, EXTENDED_ROUTER, EXTENDED_GATEWAY = 1001, 1002, 1003


class SflowQueue:
    """sFlow datagrams queued during one decode call."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.received: list[float] = []
        self.origins: list[int] = []
        self.decapsulation: list[int] = []

    def add(self, payload: bytes, received: float, origin: int = 0, decapsulation: int = NONE) -> None:
        self.payloads.append(payload)
        self.received.append(received)
        self.origins.append(origin)
        self.decapsulation.append(decapsulation)

    def parts(self) -> list[tuple[int, dict]]:
        """The flow samples of all queued datagrams as one part (none when there are none)."""
        samples = _walk(self.payloads, self.received, self.origins, self.decapsulation)
        if samples is None:
            return []
        n, cols = sample_columns(samples)
        if not n:
            return []
        metrics.FLOWS_BY_KIND["sflow_v5"].inc(n)
        return [(n, cols)]


class _Samples:
    """The flow samples of one call as per-sample arrays, plus what the walk read in Python."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cols: dict[str, np.ndarray] = {}
        self.headers: Headers | None = None
        self.decapsulation: np.ndarray | None = None  # per sample, where some listener asked for it
        self.header_rows = np.zeros(0, np.int64)
        self.header_info = np.zeros((0, 3), np.int64)  # protocol, frame length, stripped
        self.next_hops: dict[int, bytes] = {}  # sample index → 16-byte next hop
        self.as_paths: dict[int, tuple[int, ...]] = {}
        self.sampled_ip: dict[int, tuple] = {}  # sample index → IPv4/IPv6 record values


def _walk(payloads: list[bytes], received: list[float], origins: list[int],
          decapsulation: list[int]) -> _Samples | None:
    n = len(payloads)
    buffer, starts, lengths = joined(payloads, _PAD)
    be32 = strided_view(buffer, ">u4")
    ends = starts + lengths
    short = lengths < 8
    address_type = be32[starts + 4]
    bad = ~short & (address_type != 1) & (address_type != 2)
    head = starts + np.where(address_type == 2, 24, 12)
    cut = ~short & ~bad & (ends < head + 16)
    count("truncated", short | cut)
    count("bad_length", bad)
    agents = strided_view(buffer, "V16")[starts + 8].view(np.uint8).reshape(n, 16).copy()
    v4 = address_type == 1
    agents[v4, 12:] = agents[v4, :4]
    agents[v4, :12] = np.frombuffer(V4_MAPPED_PREFIX, np.uint8)
    datagrams = np.nonzero(~short & ~bad & ~cut)[0]
    sample_dg, sample, sample_end = lock_step(buffer, datagrams, head[datagrams] + 16, ends[datagrams], header=8,
                                              inclusive=False, remaining=be32[head[datagrams] + 12].astype(np.int64),
                                              limit=limits.MAX_SAMPLES_PER_DATAGRAM)
    fmt, body = be32[sample], sample + 8
    flow = (fmt == FLOW_SAMPLE) | (fmt == EXPANDED_FLOW_SAMPLE)
    counter = (fmt == COUNTER_SAMPLE) | (fmt == EXPANDED_COUNTER_SAMPLE)
    if counter.any():
        metrics.SFLOW_COUNTER_SAMPLES.inc(int(np.count_nonzero(counter)))
    count("unsupported", ~flow & ~counter)  # enterprise-specific samples
    expanded = fmt == EXPANDED_FLOW_SAMPLE
    too_short = flow & (sample_end - body < np.where(expanded, 44, 32))
    count("truncated", too_short)
    keep = flow & ~too_short
    sample_dg, body, sample_end, expanded = sample_dg[keep], body[keep], sample_end[keep], expanded[keep]
    if not body.size:
        return None
    samples = _Samples(len(body))
    _sample_fields(samples, be32, body, expanded)
    cols = samples.cols
    cols["TimeReceived"] = np.array(received, np.float64).astype(np.int64)[sample_dg]
    cols[ORIGIN] = np.array(origins, np.int64)[sample_dg]
    if any(decapsulation):
        samples.decapsulation = np.array(decapsulation, np.int64)[sample_dg]
    cols["ExporterAddress"] = agents[sample_dg]
    records = np.where(expanded, be32[body + 40], be32[body + 28]).astype(np.int64)
    first = body + np.where(expanded, 44, 32)
    owner, record, record_end = lock_step(buffer, np.arange(len(body)), first, sample_end, header=8,
                                          inclusive=False, remaining=records, limit=limits.MAX_RECORDS_PER_SAMPLE)
    _records(samples, buffer, be32, owner, record + 8, be32[record].astype(np.int64), record_end)
    return samples


def _sample_fields(samples: _Samples, be32: np.ndarray, body: np.ndarray, expanded: np.ndarray) -> None:
    """Rate and interfaces of compact (format 1) and expanded (format 3) flow samples."""
    compact_in, compact_out = be32[body + 20], be32[body + 24]
    # sFlow v5 interface fields: a 2-bit format (the top bits of a compact sample's 32-bit value,
    # a word of its own in an expanded sample) and a 30-bit value. Format 0 is one ifIndex, where
    # 0x3FFFFFFF means the device itself (the packet originated or terminated there): no
    # interface, stored as 0. Format 1 is a discarded packet (value: the reason), format 2
    # several output interfaces (value: how many): no single ifIndex either.
    in_format = np.where(expanded, be32[body + 24], compact_in >> 30)
    in_value = np.where(expanded, be32[body + 28], compact_in & 0x3FFFFFFF)
    out_format = np.where(expanded, be32[body + 32], compact_out >> 30)
    out_value = np.where(expanded, be32[body + 36], compact_out & 0x3FFFFFFF)
    cols = samples.cols
    cols["SamplingRate"] = np.where(expanded, be32[body + 12], be32[body + 8])
    cols["InIfIndex"] = _single_interface(in_format, in_value)
    cols["OutIfIndex"] = _single_interface(out_format, out_value)
    cols["ForwardingStatus"] = np.where(out_format == 1, sflow_discard_status(out_value), 0)
    n = samples.n
    for name in ("SrcVlan", "DstVlan", "SrcNetMask", "DstNetMask", "SrcAS", "DstAS"):
        cols[name] = np.zeros(n, np.int64)


INTERNAL_INTERFACE = 0x3FFFFFFF


def _single_interface(fmt: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The ifIndex of a format-0 interface field, else 0 (internal, discarded, several)."""
    return np.where((fmt == 0) & (value != INTERNAL_INTERFACE), value, 0)


def _vlan(value: np.ndarray) -> np.ndarray:
    """An extended-switch VLAN: 0-4095 as sent; anything larger (0xFFFFFFFF) means unknown: 0."""
    return np.where(value < 4096, value, 0)


def _records(samples: _Samples, buffer: bytes, be32: np.ndarray, owner: np.ndarray, body: np.ndarray,
             fmt: np.ndarray, end: np.ndarray) -> None:
    """Flow records into the sample columns; where a sample repeats a record, the last one wins."""
    length = end - body
    cols = samples.cols
    switch = (fmt == EXTENDED_SWITCH) & (length >= 16)
    if switch.any():
        rows, at = owner[switch], body[switch]
        cols["SrcVlan"][rows] = _vlan(be32[at])
        cols["DstVlan"][rows] = _vlan(be32[at + 8])
    header = (fmt == RAW_HEADER) & (length >= 16)
    if header.any():
        rows, at = owner[header], body[header]
        last = np.zeros(samples.n, np.int64) - 1
        last[rows] = np.arange(len(rows))  # the last header record of each sample
        chosen = last[last >= 0]
        rows, at = rows[chosen], at[chosen]
        size = np.minimum(np.minimum(be32[at + 12].astype(np.int64), length[header][chosen] - 16), HEADER_BYTES)
        samples.header_rows = rows
        samples.header_info = np.stack([be32[at], be32[at + 4], be32[at + 8]], axis=1).astype(np.int64)
        samples.headers = Headers.from_rows(strided_view(buffer, f"V{ROW}")[at + 16], size)
    python = np.isin(fmt, (EXTENDED_ROUTER, EXTENDED_GATEWAY, SAMPLED_IPV4, SAMPLED_IPV6))
    for index, start, record_fmt, record_end in zip(owner[python].tolist(), body[python].tolist(),
                                                    fmt[python].tolist(), end[python].tolist()):
        _variable_record(samples, buffer, index, start, record_fmt, record_end)


def _variable_record(samples: _Samples, data: bytes, index: int, start: int, fmt: int, end: int) -> None:
    cols = samples.cols
    if fmt == EXTENDED_ROUTER:
        hop, at = _address(data, start, end)
        if hop is not None and end - at >= 8:
            samples.next_hops[index] = hop
            cols["SrcNetMask"][index], cols["DstNetMask"][index] = U32x2.unpack_from(data, at)
    elif fmt == EXTENDED_GATEWAY:
        gateway = _gateway(data, start, end)
        if gateway is not None:
            hop, router_as, src_as, path = gateway
            samples.next_hops.setdefault(index, hop)
            # The flow starts at the router when its source AS is 0, and ends there when the
            # destination AS path is empty: the router's own AS stands for either (as pmacct
            # and the reference do).
            cols["SrcAS"][index] = src_as or router_as
            if path:
                samples.as_paths[index] = path
            cols["DstAS"][index] = path[-1] if path else router_as
    elif fmt == SAMPLED_IPV4 and end - start >= IPV4_RECORD.size:
        samples.sampled_ip[index] = (4,) + IPV4_RECORD.unpack_from(data, start)
    elif fmt == SAMPLED_IPV6 and end - start >= IPV6_RECORD.size:
        samples.sampled_ip[index] = (6,) + IPV6_RECORD.unpack_from(data, start)


def _address(data: bytes, offset: int, end: int) -> tuple[bytes | None, int]:
    if end - offset < 8:
        return None, end
    kind = U32.unpack_from(data, offset)[0]
    if kind == 1:
        return V4_MAPPED_PREFIX + data[offset + 4:offset + 8], offset + 8
    if kind == 2 and end - offset >= 20:
        return data[offset + 4:offset + 20], offset + 20
    return None, end


def _gateway(data: bytes, offset: int, end: int):
    """Extended gateway: next hop, the router's AS, the source AS and the destination AS path
    (segments flattened)."""
    hop, offset = _address(data, offset, end)
    if hop is None or end - offset < 16:
        return None
    router_as, src_as, _, segments = U32x4.unpack_from(data, offset)
    offset += 16
    path: list[int] = []
    for _ in range(min(segments, 64)):
        if end - offset < 8:
            return None
        _, length = U32x2.unpack_from(data, offset)
        offset += 8
        if end - offset < 4 * length:
            return None
        path.extend(struct.unpack_from(f"!{length}I", data, offset))
        offset += 4 * length
    return hop, router_as, src_as, tuple(path)


# -- columns ----------------------------------------------------------------------------------------

def sample_columns(samples: _Samples) -> tuple[int, dict]:
    """The walked samples → one part of flow columns."""
    n = samples.n
    cols: dict = dict(samples.cols)
    cols["Packets"] = np.ones(n, np.uint64)
    cols["TimeFlowStart"] = cols["TimeFlowEnd"] = cols["TimeReceived"] * 1000
    keep = None
    decapsulation = samples.decapsulation
    if decapsulation is not None:
        keep = decapsulation == NONE  # a sample without a packet header is in no tunnel
    if samples.headers is not None:
        info = samples.header_info
        rows = samples.header_rows
        parsed, tunneled = parse(samples.headers, info[:, 0], info[:, 1], info[:, 2],
                                 None if decapsulation is None else decapsulation[rows])
        _scatter(cols, parsed, rows, n)
        if keep is not None:
            keep[rows] |= tunneled
    if samples.sampled_ip:
        _sampled_ip(cols, samples.sampled_ip, n)
    _extended(cols, samples, n)
    if keep is not None and not keep.all():
        metrics.error("not_encapsulated", int(np.count_nonzero(~keep)))
        return int(np.count_nonzero(keep)), take_rows(cols, keep)
    return n, cols



def _scatter(cols: dict, parsed: dict, which: np.ndarray, n: int) -> None:
    """Place per-header columns at their sample rows (the header's VLAN only where no switch record
    gave one)."""
    full = len(which) == n
    for name, values in parsed.items():
        if name == "MPLSLabels":
            cols[name] = values if full else _scatter_lists(values, which, n)
            continue
        if full:
            target = values
        else:
            target = np.zeros((n,) + values.shape[1:], values.dtype)
            target[which] = values
        if name == "SrcVlan":
            # A sample without an extended-switch VLAN takes the header's for both directions.
            no_switch = (cols["SrcVlan"] == 0) & (cols["DstVlan"] == 0)
            cols["DstVlan"] = np.where(no_switch, target, cols["DstVlan"])
            target = np.where(no_switch, target, cols["SrcVlan"])
        cols[name] = target


def _scatter_lists(values: ListColumn, which: np.ndarray, n: int) -> ListColumn:
    lengths = np.zeros(n, np.int64)
    lengths[which] = np.diff(values.offsets)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ListColumn(offsets, values.values)


def _sampled_ip(cols: dict, sampled: dict, n: int) -> None:
    """Samples carrying sampled IPv4/IPv6 records instead of (or beside) a raw header."""
    for name, dtype, shape in (("SrcAddr", np.uint8, (16,)), ("DstAddr", np.uint8, (16,)),
                               ("Proto", np.int64, ()), ("SrcPort", np.int64, ()), ("DstPort", np.int64, ()),
                               ("TCPFlags", np.int64, ()), ("IPTos", np.int64, ()), ("Bytes", np.int64, ()),
                               ("EType", np.int64, ())):
        if name not in cols:
            cols[name] = np.zeros((n,) + shape, dtype)
        else:
            cols[name] = np.array(cols[name])
    for i, (version, length, proto, src, dst, sport, dport, flags, tos) in sampled.items():
        if cols["EType"][i]:
            continue  # the raw header said it all
        prefix = V4_MAPPED_PREFIX if version == 4 else b""
        cols["SrcAddr"][i] = np.frombuffer(prefix + src, np.uint8)
        cols["DstAddr"][i] = np.frombuffer(prefix + dst, np.uint8)
        cols["Proto"][i], cols["SrcPort"][i], cols["DstPort"][i] = proto, sport, dport
        cols["TCPFlags"][i], cols["IPTos"][i], cols["Bytes"][i] = flags, tos, length
        cols["EType"][i] = 0x800 if version == 4 else 0x86DD


def _extended(cols: dict, samples: _Samples, n: int) -> None:
    if samples.next_hops:
        hops = np.zeros((n, 16), np.uint8)
        for i, hop in samples.next_hops.items():
            hops[i] = np.frombuffer(hop, np.uint8)
        cols["NextHop"] = hops
    if samples.as_paths:
        lengths = np.zeros(n, np.int64)
        values = []
        for i in sorted(samples.as_paths):
            lengths[i] = len(samples.as_paths[i])
            values.extend(samples.as_paths[i])
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cols["DstASPath"] = ListColumn(offsets, np.array(values, np.uint32))
