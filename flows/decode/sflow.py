"""sFlow v5 datagrams: flow samples → flow columns, counter samples counted.

The walk over samples and records is Python (sFlow has one record set per sample), and keeps
to slicing and struct unpacking; the sampled packet headers are then parsed all together with
numpy: Ethernet, 802.1Q/802.1ad tags, an MPLS stack, IPv4 or IPv6 (with the common extension
headers), and TCP/UDP ports, TCP flags or ICMP type/code.

Bytes semantics (same as NetFlow's): the L3 length of the sampled packet — the IP total length
read from its header, or, when the header was cut before it or the packet is not IP, the frame
length less the link-layer header and the bytes the agent stripped (e.g. the FCS). Each sample
is one packet; SamplingRate is the sample's rate. The exporter is the agent address.
"""

from __future__ import annotations

import struct
from array import array

import numpy as np

from flows.decode import metrics
from flows.decode.columns import V4_MAPPED_PREFIX, ListColumn, strided_view

U32 = struct.Struct("!I")
U32x2 = struct.Struct("!II")
U32x4 = struct.Struct("!IIII")
FLOW_SAMPLE = struct.Struct("!8I")
EXPANDED_FLOW_SAMPLE = struct.Struct("!11I")
IPV4_RECORD = struct.Struct("!II4s4sIIII")
IPV6_RECORD = struct.Struct("!II16s16sIIII")
HEADER_BYTES = 160  # enough for Ethernet + 2 tags + 4 labels + IPv6 + 2 ext headers + TCP
_ROW = HEADER_BYTES + 16  # zero padding: a 16-byte read at the last header byte stays in the row
DISCARDED = 128  # RFC 7270 forwarding status "dropped, unknown reason"
ETHERNET, IPV4, IPV6 = 1, 11, 12

# Per-sample row: received, agent index, rate, in, out, forwarding status, src vlan, dst vlan,
# src mask, dst mask, src AS, dst AS, header protocol, frame length, stripped, header index.
_ROW_FIELDS = 16
_NO_HEADER = -1


class SflowQueue:
    """Samples queued during one decode call."""

    def __init__(self) -> None:
        self.rows = array("q")  # _ROW_FIELDS values per sample, flat
        self.counter_samples = 0
        self.headers: list[bytes] = []
        self.agents: dict[bytes, int] = {}
        self.next_hops: dict[int, bytes] = {}  # sample index → 16-byte next hop
        self.as_paths: dict[int, tuple[int, ...]] = {}
        self.sampled_ip: dict[int, tuple] = {}  # sample index → IPv4/IPv6 record values

    @property
    def count(self) -> int:
        return len(self.rows) // _ROW_FIELDS

    def columns(self) -> tuple[int, dict]:
        return sample_columns(self)


def walk_sflow(queue: SflowQueue, data: bytes, received: float) -> None:
    """Queue the flow samples of one sFlow v5 datagram; count its counter samples."""
    end = len(data)
    if end < 8:
        metrics.error("truncated")
        return
    address_type = U32.unpack_from(data, 4)[0]
    if address_type == 1:
        agent, offset = V4_MAPPED_PREFIX + data[8:12], 12
    elif address_type == 2:
        agent, offset = data[8:24], 24
    else:
        metrics.error("bad_length")
        return
    if end < offset + 16:
        metrics.error("truncated")
        return
    count = U32x4.unpack_from(data, offset)[3]
    offset += 16
    agent_index = queue.agents.setdefault(agent, len(queue.agents))
    received_s = int(received)
    for _ in range(count):
        if end - offset < 8:
            metrics.error("truncated")
            return
        sample_format, length = U32x2.unpack_from(data, offset)
        offset += 8
        sample_end = offset + length
        if sample_end > end:
            metrics.error("truncated")
            return
        if sample_format == 1 or sample_format == 3:
            _flow_sample(queue, data, offset, sample_end, sample_format == 3, agent_index, received_s)
        elif sample_format == 2 or sample_format == 4:
            queue.counter_samples += 1  # counted into the metric once per call
        else:
            metrics.error("unsupported")  # enterprise-specific samples
        offset = sample_end


def _flow_sample(queue: SflowQueue, data: bytes, offset: int, end: int, expanded: bool,
                 agent: int, received: int) -> None:
    if expanded:
        if end - offset < 44:
            metrics.error("truncated")
            return
        _, _, _, rate, _, _, in_fmt, in_value, out_fmt, out_value, records = \
            EXPANDED_FLOW_SAMPLE.unpack_from(data, offset)
        offset += 44
        in_if = in_value if in_fmt == 0 else 0
        out_if = out_value if out_fmt == 0 else 0
        discarded = out_fmt == 1
    else:
        if end - offset < 32:
            metrics.error("truncated")
            return
        _, _, rate, _, _, in_value, out_value, records = FLOW_SAMPLE.unpack_from(data, offset)
        offset += 32
        # Compact interface fields: format (top 2 bits) 0 is an ifIndex, 1 a discarded packet.
        in_if = in_value if in_value < 0x40000000 else 0
        out_if = out_value if out_value < 0x40000000 else 0
        discarded = out_value >> 30 == 1
    index = len(queue.rows) // _ROW_FIELDS
    src_vlan = dst_vlan = src_mask = dst_mask = src_as = dst_as = 0
    header_protocol = frame_length = stripped = 0
    header_index = _NO_HEADER
    for _ in range(records):
        if end - offset < 8:
            metrics.error("truncated")
            break
        record_format, length = U32x2.unpack_from(data, offset)
        start, offset = offset + 8, offset + 8 + length
        if offset > end:
            metrics.error("truncated")
            break
        if record_format == 1 and length >= 16:  # raw packet header
            header_protocol, frame_length, stripped, header_length = U32x4.unpack_from(data, start)
            header_index = len(queue.headers)
            if header_length > length - 16:
                header_length = length - 16
            queue.headers.append(data[start + 16:start + 16 + (header_length if header_length < HEADER_BYTES else HEADER_BYTES)])
        elif record_format == 1001 and length >= 16:  # extended switch
            src_vlan, _, dst_vlan, _ = U32x4.unpack_from(data, start)
        elif record_format == 1002:  # extended router
            hop, at = _address(data, start, offset)
            if hop is not None and offset - at >= 8:
                queue.next_hops[index] = hop
                src_mask, dst_mask = U32x2.unpack_from(data, at)
        elif record_format == 1003:  # extended gateway
            gateway = _gateway(data, start, offset)
            if gateway is not None:
                hop, src_as, path = gateway
                queue.next_hops.setdefault(index, hop)
                if path:
                    queue.as_paths[index] = path
                    dst_as = path[-1]
        elif record_format == 3 and length >= IPV4_RECORD.size:
            queue.sampled_ip[index] = (4,) + IPV4_RECORD.unpack_from(data, start)
        elif record_format == 4 and length >= IPV6_RECORD.size:
            queue.sampled_ip[index] = (6,) + IPV6_RECORD.unpack_from(data, start)
    queue.rows.extend((received, agent, rate, in_if, out_if, DISCARDED if discarded else 0,
                       src_vlan & 0xFFF, dst_vlan & 0xFFF, src_mask, dst_mask, src_as, dst_as,
                       header_protocol, frame_length, stripped, header_index))


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
    """Extended gateway: next hop, source AS and the destination AS path (segments flattened)."""
    hop, offset = _address(data, offset, end)
    if hop is None or end - offset < 16:
        return None
    _, src_as, _, segments = U32x4.unpack_from(data, offset)
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
    return hop, src_as, tuple(path)


# -- vectorised header parsing -------------------------------------------------------------------

class _Headers:
    """The sampled headers, one zero-padded row of _ROW bytes each, read at per-row cursors
    through stride-1 views (one gather per field, no 2-D fancy indexing)."""

    def __init__(self, headers: list[bytes]) -> None:
        n = len(headers)
        self.length = np.fromiter(map(len, headers), np.int64, n)
        self.buffer = b"".join(h.ljust(_ROW, b"\0") for h in headers)
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


def parse_headers(headers: list[bytes], protocol: np.ndarray, frame: np.ndarray,
                  stripped: np.ndarray) -> dict:
    """Columns of the sampled packets whose header record was parsed."""
    h = _Headers(headers)
    n = len(headers)
    eth = protocol == ETHERNET
    offset = np.where(eth, 14, 0)
    etype = np.where(eth, h.u16(np.full(n, 12)), np.where(protocol == IPV4, 0x800,
                                                          np.where(protocol == IPV6, 0x86DD, 0)))
    etype = np.where(eth & ~h.has(np.zeros(n, np.int64), 14), 0, etype)
    out: dict = {"SrcMAC": np.where(eth, _mac(h, 6), 0), "DstMAC": np.where(eth, _mac(h, 0), 0)}
    vlan = np.zeros(n, np.int64)
    for _ in range(2):  # 802.1Q / 802.1ad tags: the outer one is the VLAN
        tagged = ((etype == 0x8100) | (etype == 0x88A8)) & h.has(offset, 4)
        vlan = np.where(tagged & (vlan == 0), h.u16(offset) & 0xFFF, vlan)
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

def sample_columns(queue: SflowQueue) -> tuple[int, dict]:
    """All queued samples → one part of flow columns."""
    rows = np.frombuffer(queue.rows, np.int64).reshape(-1, _ROW_FIELDS)
    n = len(rows)
    agents = np.frombuffer(b"".join(queue.agents), np.uint8).reshape(-1, 16)
    cols: dict = {
        "TimeReceived": rows[:, 0], "ExporterAddress": agents[rows[:, 1]], "SamplingRate": rows[:, 2],
        "InIfIndex": rows[:, 3], "OutIfIndex": rows[:, 4], "ForwardingStatus": rows[:, 5],
        "SrcVlan": rows[:, 6], "DstVlan": rows[:, 7], "SrcNetMask": rows[:, 8], "DstNetMask": rows[:, 9],
        "SrcAS": rows[:, 10], "DstAS": rows[:, 11], "Packets": np.ones(n, np.uint64),
    }
    cols["TimeFlowStart"] = cols["TimeFlowEnd"] = rows[:, 0] * 1000
    with_header = rows[:, 15] != _NO_HEADER
    if with_header.any():
        which = np.nonzero(with_header)[0]
        parsed = parse_headers(queue.headers, rows[which, 12], rows[which, 13], rows[which, 14])
        _scatter(cols, parsed, which, n)
    if queue.sampled_ip:
        _sampled_ip(cols, queue.sampled_ip, n)
    _extended(cols, queue, n)
    return n, cols


def _scatter(cols: dict, parsed: dict, which: np.ndarray, n: int) -> None:
    """Place per-header columns at their sample rows (header VLAN only where no switch record)."""
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
            target = np.where(cols["SrcVlan"] == 0, target, cols["SrcVlan"])
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


def _extended(cols: dict, queue: SflowQueue, n: int) -> None:
    if queue.next_hops:
        hops = np.zeros((n, 16), np.uint8)
        for i, hop in queue.next_hops.items():
            hops[i] = np.frombuffer(hop, np.uint8)
        cols["NextHop"] = hops
    if queue.as_paths:
        lengths = np.zeros(n, np.int64)
        values = []
        for i in sorted(queue.as_paths):
            lengths[i] = len(queue.as_paths[i])
            values.extend(queue.as_paths[i])
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cols["DstASPath"] = ListColumn(offsets, np.array(values, np.uint32))
