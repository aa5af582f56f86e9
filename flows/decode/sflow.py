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
from flows.decode.columns import ORIGIN, V4_MAPPED_PREFIX, ListColumn, strided_view
from flows.decode.walk import count, joined, lock_step

U32 = struct.Struct("!I")
U32x2 = struct.Struct("!II")
U32x4 = struct.Struct("!IIII")
IPV4_RECORD = struct.Struct("!II4s4sIIII")
IPV6_RECORD = struct.Struct("!II16s16sIIII")
HEADER_BYTES = 160  # enough for Ethernet + 2 tags + 4 labels + IPv6 + 2 ext headers + TCP
_ROW = HEADER_BYTES + 16  # zero padding: a 16-byte read at the last header byte stays in the row
_PAD = _ROW + 64  # zero bytes after the joined datagrams: fixed-size reads never leave the buffer
DISCARDED = 128  # RFC 7270 forwarding status "dropped, unknown reason"
ETHERNET, IPV4, IPV6 = 1, 11, 12
FLOW_SAMPLE, COUNTER_SAMPLE, EXPANDED_FLOW_SAMPLE, EXPANDED_COUNTER_SAMPLE = 1, 2, 3, 4
RAW_HEADER, SAMPLED_IPV4, SAMPLED_IPV6 = 1, 3, 4
EXTENDED_SWITCH, EXTENDED_ROUTER, EXTENDED_GATEWAY = 1001, 1002, 1003


class SflowQueue:
    """sFlow datagrams queued during one decode call."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.received: list[float] = []
        self.origins: list[int] = []

    def add(self, payload: bytes, received: float, origin: int = 0) -> None:
        self.payloads.append(payload)
        self.received.append(received)
        self.origins.append(origin)

    def parts(self) -> list[tuple[int, dict]]:
        """The flow samples of all queued datagrams as one part (none when there are none)."""
        samples = _walk(self.payloads, self.received, self.origins)
        if samples is None:
            return []
        n, cols = sample_columns(samples)
        metrics.FLOWS_BY_KIND["sflow_v5"].inc(n)
        return [(n, cols)]


class _Samples:
    """The flow samples of one call as per-sample arrays, plus what the walk read in Python."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cols: dict[str, np.ndarray] = {}
        self.headers: _Headers | None = None
        self.header_rows = np.zeros(0, np.int64)
        self.header_info = np.zeros((0, 3), np.int64)  # protocol, frame length, stripped
        self.next_hops: dict[int, bytes] = {}  # sample index → 16-byte next hop
        self.as_paths: dict[int, tuple[int, ...]] = {}
        self.sampled_ip: dict[int, tuple] = {}  # sample index → IPv4/IPv6 record values


def _walk(payloads: list[bytes], received: list[float], origins: list[int]) -> _Samples | None:
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
    cols["ForwardingStatus"] = np.where(out_format == 1, DISCARDED, 0)
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
        samples.headers = _Headers(strided_view(buffer, f"V{_ROW}")[at + 16], size)
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


# -- vectorised header parsing -------------------------------------------------------------------

class _Headers:
    """The sampled headers, one row of _ROW bytes each (zeros past the header), read at per-row
    cursors through stride-1 views (one gather per field, no 2-D fancy indexing)."""

    def __init__(self, rows: np.ndarray, length: np.ndarray) -> None:
        n = len(rows)
        matrix = rows.view(np.uint8).reshape(n, _ROW).copy()
        matrix[np.arange(_ROW) >= length[:, None]] = 0
        self.length = length
        self.buffer = matrix.tobytes()
        self.flat = np.frombuffer(self.buffer, np.uint8)
        self.be16 = strided_view(self.buffer, ">u2")
        self.base = np.arange(n) * _ROW
        self.rows = np.arange(n)

    def u8(self, at: np.ndarray) -> np.ndarray:
        return self.flat[self.base + np.minimum(at, HEADER_BYTES - 1)].astype(np.int64)

    def u16(self, at: np.ndarray) -> np.ndarray:
        return self.be16[self.base + np.minimum(at, HEADER_BYTES - 1)].astype(np.int64)

    def take(self, at: np.ndarray, width: int) -> np.ndarray:
        """(n, width) bytes at the cursors (zeros past the header)."""
        starts = self.base + np.minimum(at, _ROW - width)
        return strided_view(self.buffer, f"V{width}")[starts].view(np.uint8).reshape(-1, width)

    def has(self, at: np.ndarray, width: int) -> np.ndarray:
        return at + width <= self.length


def parse_headers(h: _Headers, protocol: np.ndarray, frame: np.ndarray, stripped: np.ndarray) -> dict:
    """Columns of the sampled packets whose header record was parsed."""
    n = len(h.rows)
    eth = protocol == ETHERNET
    offset = np.where(eth, 14, 0)
    etype = np.where(eth, h.u16(np.full(n, 12)), np.where(protocol == IPV4, 0x800,
                                                          np.where(protocol == IPV6, 0x86DD, 0)))
    etype = np.where(eth & ~h.has(np.zeros(n, np.int64), 14), 0, etype)
    out: dict = {"SrcMAC": np.where(eth, _mac(h, 6), 0), "DstMAC": np.where(eth, _mac(h, 0), 0)}
    vlan = np.zeros(n, np.int64)
    for _ in range(2):  # 802.1Q / 802.1ad tags: with QinQ the inner (customer) tag is the VLAN
        tagged = ((etype == 0x8100) | (etype == 0x88A8)) & h.has(offset, 4)
        vlan = np.where(tagged, h.u16(offset) & 0xFFF, vlan)
        etype = np.where(tagged, h.u16(offset + 2), etype)
        offset = np.where(tagged, offset + 4, offset)
    out["SrcVlan"] = vlan
    out["MPLSLabels"], etype, offset = _mpls(h, etype, offset)
    ip4 = (etype == 0x800) & h.has(offset, 20)
    ip6 = (etype == 0x86DD) & h.has(offset, 40)
    l2_length = offset
    out["EType"] = etype
    out["Proto"] = np.where(ip4, h.u8(offset + 9), 0)
    out["IPTos"] = np.where(ip4, h.u8(offset + 1), np.where(ip6, ((h.u8(offset) & 0xF) << 4) | (h.u8(offset + 1) >> 4), 0))
    out["IPTTL"] = np.where(ip4, h.u8(offset + 8), np.where(ip6, h.u8(offset + 7), 0))
    ip_length = np.where(ip4, h.u16(offset + 2), np.where(ip6, h.u16(offset + 4) + 40, -1))
    fallback = frame.astype(np.int64) - stripped.astype(np.int64) - l2_length
    out["Bytes"] = np.where(ip_length >= 0, ip_length, np.maximum(fallback, 0))
    out["SrcAddr"] = _addresses(h, ip4, ip6, offset, 12, 8)
    out["DstAddr"] = _addresses(h, ip4, ip6, offset, 16, 24)
    # Transport header: after IPv4 options, or after IPv6's hop-by-hop/routing/dest/fragment.
    proto = np.where(ip6, h.u8(offset + 6), out["Proto"])
    l4 = np.where(ip4, offset + (h.u8(offset) & 0xF) * 4, offset + 40)
    first_fragment = ~ip4 | ((h.u16(offset + 6) & 0x1FFF) == 0)
    for _ in range(2):
        ext = ip6 & np.isin(proto, (0, 43, 60)) & h.has(l4, 2)
        frag = ip6 & (proto == 44) & h.has(l4, 8)
        first_fragment &= ~frag | ((h.u16(l4 + 2) & 0xFFF8) == 0)
        next_proto = h.u8(l4)
        l4 = np.where(ext, l4 + (h.u8(l4 + 1) + 1) * 8, np.where(frag, l4 + 8, l4))
        proto = np.where(ext | frag, next_proto, proto)
    out["Proto"] = np.where(ip4 | ip6, proto, 0)
    _transport(h, out, proto, l4, (ip4 | ip6) & first_fragment, ip6)
    return out


def _mac(h: _Headers, at: int) -> np.ndarray:
    raw = h.take(np.full(len(h.rows), at), 6).astype(np.uint64)
    value = np.zeros(len(h.rows), np.uint64)
    for i in range(6):
        value = (value << np.uint64(8)) | raw[:, i]
    return value


def _mpls(h: _Headers, etype: np.ndarray, offset: np.ndarray):
    """Walk up to 8 MPLS label entries; the payload's IP version follows the bottom label."""
    n = len(etype)
    active = ((etype == 0x8847) | (etype == 0x8848))
    labels = np.zeros((n, 8), np.uint32)
    present = np.zeros((n, 8), bool)
    for i in range(8):
        active = active & h.has(offset, 4)
        entry = (h.u8(offset) << 16) | (h.u8(offset + 1) << 8) | h.u8(offset + 2)
        labels[:, i] = entry >> 4
        present[:, i] = active
        offset = np.where(active, offset + 4, offset)
        active = active & ((entry & 1) == 0)
    stacked = present.any(axis=1)
    version = h.u8(offset) >> 4
    etype = np.where(stacked, np.where(version == 4, 0x800, np.where(version == 6, 0x86DD, 0)), etype)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    return ListColumn(offsets, labels[present]), etype, offset


def _addresses(h: _Headers, ip4: np.ndarray, ip6: np.ndarray, offset: np.ndarray, at4: int,
               at6: int) -> np.ndarray:
    out = np.zeros((len(ip4), 16), np.uint8)
    out[ip4, 10:12] = 0xFF
    out[ip4, 12:] = h.take(offset + at4, 4)[ip4]
    out[ip6] = h.take(offset + at6, 16)[ip6]
    return out


def _transport(h: _Headers, out: dict, proto: np.ndarray, l4: np.ndarray, ok: np.ndarray,
               ip6: np.ndarray) -> None:
    ports = ok & ((proto == 6) | (proto == 17) | (proto == 132)) & h.has(l4, 4)
    out["SrcPort"] = np.where(ports, h.u16(l4), 0)
    out["DstPort"] = np.where(ports, h.u16(l4 + 2), 0)
    tcp = ok & (proto == 6) & h.has(l4, 14)
    out["TCPFlags"] = np.where(tcp, h.u8(l4 + 13), 0)
    icmp = ok & h.has(l4, 2)
    icmp4, icmp6 = icmp & (proto == 1) & ~ip6, icmp & (proto == 58) & ip6
    icmp_type, icmp_code = h.u8(l4), h.u8(l4 + 1)
    out["ICMPv4Type"], out["ICMPv4Code"] = np.where(icmp4, icmp_type, 0), np.where(icmp4, icmp_code, 0)
    out["ICMPv6Type"], out["ICMPv6Code"] = np.where(icmp6, icmp_type, 0), np.where(icmp6, icmp_code, 0)


# -- columns ----------------------------------------------------------------------------------------

def sample_columns(samples: _Samples) -> tuple[int, dict]:
    """The walked samples → one part of flow columns."""
    n = samples.n
    cols: dict = dict(samples.cols)
    cols["Packets"] = np.ones(n, np.uint64)
    cols["TimeFlowStart"] = cols["TimeFlowEnd"] = cols["TimeReceived"] * 1000
    if samples.headers is not None:
        info = samples.header_info
        parsed = parse_headers(samples.headers, info[:, 0], info[:, 1], info[:, 2])
        _scatter(cols, parsed, samples.header_rows, n)
    if samples.sampled_ip:
        _sampled_ip(cols, samples.sampled_ip, n)
    _extended(cols, samples, n)
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
