"""Packet bytes → flow columns, for every decoder that is handed packets rather than flows:
sFlow raw packet headers and the IPFIX / NetFlow v9 packet sections (dataLinkFrameSection
IE 315, layer2packetSectionData IE 104, ipHeaderPacketSection IE 313).

All packets of a call are parsed together, one row of ROW bytes each, read at per-row cursors
with numpy gathers, so the Python cost is per call:

- link layer: Ethernet, up to two 802.1Q/802.1ad tags (QinQ: the inner, customer tag is the
  VLAN), an MPLS label stack, and Ethernet carried over MPLS (EVPN, pseudowires) with or
  without the RFC 4385 control word — the inner frame's MACs and VLAN are then the flow's;
- IPv4 or IPv6 (hop-by-hop, routing, destination-options and fragment headers skipped);
- TCP/UDP/SCTP ports, TCP flags, ICMP type and code (first fragments only);
- with a decapsulation mode (a listener's `decapsulation`), the tunnel's inner packet instead:
  VXLAN (UDP 4789), GRE (RFC 2784/2890: checksum, key and sequence fields; IP or transparent
  Ethernet inside), IP-in-IP (4-in-4, 6-in-4, 4-in-6, 6-in-6) and SRv6 (IPv6 with or without a
  segment routing header, carrying IPv4 or IPv6: End.DT4/End.DT6). The outer headers are then
  dropped (their MPLS labels stay: they are the path the tunnel took); a packet that is not
  in such a tunnel gives no flow (counted as `not_encapsulated`, like the reference).

`Bytes` of such a packet is its IP total length (the inner one when decapsulated); when the
header was cut before it or the packet is not IP, sFlow's frame length less the link-layer
header and the stripped bytes, and 0 for a packet section (the reference's choice).
"""

from __future__ import annotations

import numpy as np

from flows.decode.columns import ListColumn, strided_view

HEADER_BYTES = 192  # Ethernet + 2 tags + 8 labels + control word + inner Ethernet + IPv6 + TCP, or an SRv6
# outer header with a 3-segment SRH + inner IPv6 + TCP
ROW = HEADER_BYTES + 16  # zero padding: a 16-byte read at the last header byte stays in the row

# Header protocols, numbered as sFlow v5's header_protocol (the IPFIX sections map onto them).
ETHERNET, IPV4, IPV6, MPLS = 1, 11, 12, 13

DECAPSULATIONS = ("none", "vxlan", "gre", "ipip", "srv6")
NONE, VXLAN, GRE, IPIP, SRV6 = range(len(DECAPSULATIONS))
VXLAN_PORT = 4789
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6, _ETHERTYPE_MPLS = 0x800, 0x86DD, 0x8847
_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_TRANSPARENT_ETHERNET = 0x6558  # GRE protocol type of a bridged Ethernet frame (RFC 1701)
# What an Ethernet header inside an MPLS payload may announce: how an EVPN / pseudowire frame
# is told from a payload that is neither IP nor Ethernet.
_INNER_ETHERTYPES = (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6, 0x806, *_VLAN_TAGS)


class Headers:
    """Packets as rows of ROW bytes (zeros past each packet's length), read at per-row cursors
    through stride-1 views: one gather per field, no 2-D fancy indexing."""

    def __init__(self, matrix: np.ndarray, length: np.ndarray) -> None:
        n = len(matrix)
        matrix[np.arange(ROW) >= length[:, None]] = 0
        self.n = n
        self.length = length
        self.buffer = matrix.tobytes() + bytes(16)  # (views stay valid with no row at all)
        self.flat = np.frombuffer(self.buffer, np.uint8)
        self.be16 = strided_view(self.buffer, ">u2")
        self.be32 = strided_view(self.buffer, ">u4")
        self.base = np.arange(n) * ROW

    @classmethod
    def from_rows(cls, rows: np.ndarray, length: np.ndarray) -> Headers:
        """From a void array of ROW-byte items (gathered from a datagram buffer)."""
        return cls(rows.view(np.uint8).reshape(len(rows), ROW).copy(), np.minimum(length, HEADER_BYTES))

    @classmethod
    def from_sections(cls, sections: np.ndarray, length: np.ndarray) -> Headers:
        """From (n, L) bytes of packet sections, each `length` bytes long."""
        matrix = np.zeros((len(sections), ROW), np.uint8)
        width = min(sections.shape[1], HEADER_BYTES)
        matrix[:, :width] = sections[:, :width]
        return cls(matrix, np.minimum(length.astype(np.int64), width))

    # (cursors only grow from 0: a minimum keeps them in the row, cheaper than np.clip)
    def u8(self, at: np.ndarray) -> np.ndarray:
        return self.flat[self.base + np.minimum(at, HEADER_BYTES - 1)].astype(np.int64)

    def u16(self, at: np.ndarray) -> np.ndarray:
        return self.be16[self.base + np.minimum(at, HEADER_BYTES - 1)].astype(np.int64)

    def u32(self, at: np.ndarray) -> np.ndarray:
        return self.be32[self.base + np.minimum(at, HEADER_BYTES - 1)].astype(np.int64)

    def take(self, at: np.ndarray, width: int) -> np.ndarray:
        """(n, width) bytes at the cursors (zeros past the packet)."""
        starts = self.base + np.minimum(at, ROW - width)
        return strided_view(self.buffer, f"V{width}")[starts].view(np.uint8).reshape(-1, width)

    def has(self, at: np.ndarray, width: int) -> np.ndarray:
        return at + width <= self.length


class _Link:
    """What the link layer says, per row: MACs and the (inner) VLAN."""

    def __init__(self, n: int) -> None:
        self.dst = np.zeros(n, np.uint64)
        self.src = np.zeros(n, np.uint64)
        self.vlan = np.zeros(n, np.int64)


def parse(h: Headers, protocol: np.ndarray, frame: np.ndarray | None = None,
          stripped: np.ndarray | None = None, decapsulation: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Columns of the packets, and the rows that give a flow (all of them unless a
    decapsulation mode asked for a tunnel that a packet is not in).

    protocol: per row ETHERNET, IPV4, IPV6 or MPLS; frame/stripped: sFlow's frame length and
    stripped bytes (None: no fallback length); decapsulation: per row a DECAPSULATIONS code.
    """
    n = h.n
    link = _Link(n)
    etype = np.select([protocol == IPV4, protocol == IPV6, protocol == MPLS],
                      [_ETHERTYPE_IPV4, _ETHERTYPE_IPV6, _ETHERTYPE_MPLS], 0)
    offset = np.zeros(n, np.int64)
    ethernet = protocol == ETHERNET
    etype, offset = _ethernet(h, ethernet, etype, offset, link)
    labels, etype, offset, carried = _mpls(h, etype, offset)
    if carried.any():  # Ethernet over MPLS: the customer's frame is the flow's
        etype, offset = _ethernet(h, carried, etype, offset, link)
    l2_length = np.where(ethernet, np.maximum(offset, 14), offset)
    net = _network(h, etype, offset)
    keep = np.ones(n, bool)
    if decapsulation is not None and (decapsulation != NONE).any():
        inner, tunneled, overhead = _decapsulate(h, decapsulation, net, link)
        asked = decapsulation != NONE
        keep = ~asked | tunneled
        # An inner header cut off by the sampled length: the outer length less the tunnel's headers.
        inner["ip_length"] = np.where(inner["ip_length"] >= 0, inner["ip_length"],
                                      np.where(net["ip_length"] >= 0, np.maximum(net["ip_length"] - overhead, 0), -1))
        net = {name: np.where(_column(tunneled, values), inner[name], values) for name, values in net.items()}
    out = {"SrcMAC": link.src, "DstMAC": link.dst, "SrcVlan": link.vlan, "MPLSLabels": labels}
    ip = net["ip4"] | net["ip6"]
    out["EType"] = np.where(ip, np.where(net["ip4"], _ETHERTYPE_IPV4, _ETHERTYPE_IPV6), net["etype"])
    for name in ("Proto", "IPTos", "IPTTL", "IPv6FlowLabel", "IPFragmentID", "IPFragmentOffset",
                 "SrcAddr", "DstAddr"):
        out[name] = net[name]
    out["SciTagsExperiment"], out["SciTagsActivity"] = scitags(net["IPv6FlowLabel"])
    length = net["ip_length"]
    if frame is not None:
        fallback = frame.astype(np.int64) - stripped.astype(np.int64) - l2_length
        out["Bytes"] = np.where(length >= 0, length, np.maximum(fallback, 0))
    else:
        out["Bytes"] = np.maximum(length, 0)
    _transport(h, out, net["proto"], net["l4"], ip & net["first_fragment"], net["ip6"])
    return out, keep


def _one_of(values: np.ndarray, options: tuple[int, ...]) -> np.ndarray:
    """values ∈ options, for a handful of options (faster than np.isin at these sizes)."""
    out = values == options[0]
    for option in options[1:]:
        out |= values == option
    return out


def _column(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    return mask[:, None] if values.ndim == 2 else mask


def _ethernet(h: Headers, rows: np.ndarray, etype: np.ndarray, offset: np.ndarray,
              link: _Link) -> tuple[np.ndarray, np.ndarray]:
    """An Ethernet header (and its VLAN tags) at `offset` of the rows `rows`: their MACs and
    VLAN go to `link`; the ethertype after the tags and the offset of the payload come back."""
    whole = h.has(offset, 14)
    etype = np.where(rows & ~whole, 0, etype)  # a frame cut inside its header says nothing more
    rows = rows & whole
    if not rows.any():
        return etype, offset
    link.dst = np.where(rows, _mac(h, offset), link.dst)
    link.src = np.where(rows, _mac(h, offset + 6), link.src)
    etype = np.where(rows, h.u16(offset + 12), etype)
    offset = np.where(rows, offset + 14, offset)
    vlan = np.where(rows, 0, link.vlan)
    for _ in range(2):  # with QinQ the inner (customer) tag is the VLAN
        tagged = rows & _one_of(etype, _VLAN_TAGS) & h.has(offset, 4)
        if not tagged.any():
            break
        vlan = np.where(tagged, h.u16(offset) & 0xFFF, vlan)
        etype = np.where(tagged, h.u16(offset + 2), etype)
        offset = np.where(tagged, offset + 4, offset)
    link.vlan = vlan
    return etype, offset


def _mac(h: Headers, at: np.ndarray) -> np.ndarray:
    raw = h.take(at, 6).astype(np.uint64)
    value = np.zeros(h.n, np.uint64)
    for i in range(6):
        value = (value << np.uint64(8)) | raw[:, i]
    return value


def _mpls(h: Headers, etype: np.ndarray, offset: np.ndarray):
    """Up to 8 label stack entries; then what the payload is: IPv4 or IPv6 (by the explicit-null
    bottom label, else by its first nibble), or an Ethernet frame (EVPN / pseudowire) after a
    control word (first nibble 0) or without one — recognised by a plausible ethertype."""
    n = len(etype)
    active = (etype == _ETHERTYPE_MPLS) | (etype == 0x8848)
    if not active.any():
        return ListColumn(np.zeros(n + 1, np.int64), np.zeros(0, np.uint32)), etype, offset, active
    labels = np.zeros((n, 8), np.uint32)
    present = np.zeros((n, 8), bool)
    last = np.full(n, -1, np.int64)
    bottom = np.zeros(n, bool)
    for i in range(8):
        active = active & h.has(offset, 4)
        entry = h.u32(offset) >> 8  # label (20 bits), traffic class (3), bottom of stack (1)
        labels[:, i] = entry >> 4
        present[:, i] = active
        last = np.where(active, entry >> 4, last)
        offset = np.where(active, offset + 4, offset)
        bottom |= active & ((entry & 1) == 1)
        active = active & ((entry & 1) == 0)
    stacked = present.any(axis=1)
    ended = stacked & bottom  # (a stack longer than 8 labels: what follows is not read)
    nibble = h.u8(offset) >> 4
    # The payload's first nibble is ambiguous (RFC 4385 section 3): an IPv4 header is taken when
    # it is a plausible one, an Ethernet frame (control word or not) when its ethertype and the
    # header after it agree, IPv6 otherwise on nibble 6.
    ipv4 = (nibble == 4) & ((h.u8(offset) & 0xF) >= 5) & (h.u16(offset + 2) >= 20)
    frame_cw = (nibble == 0) & _plausible_frame(h, offset + 4)
    frame_bare = _plausible_frame(h, offset)
    v4 = ended & ((last == 0) | ((last != 2) & ipv4))
    v6 = ended & ~v4 & ((last == 2) | ((nibble == 6) & ~frame_bare))
    not_ip = ended & ~v4 & ~v6
    # A VLAN-tagged frame without control word also reads as a plausible frame 4 bytes on (the
    # tag shifts it by exactly that), while a control word's frame reads as one without only if
    # its source MAC happens to hold an ethertype: where both read, there is no control word.
    bare = not_ip & frame_bare
    control_word = not_ip & ~bare & frame_cw
    etype = np.where(stacked, np.select([v4, v6], [_ETHERTYPE_IPV4, _ETHERTYPE_IPV6], 0), etype)
    offset = np.where(control_word, offset + 4, offset)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    return ListColumn(offsets, labels[present]), etype, offset, control_word | bare


def _plausible_frame(h: Headers, at: np.ndarray) -> np.ndarray:
    """Whether an Ethernet frame starts at `at`: its ethertype (after up to two VLAN tags) is
    ARP, or IPv4 / IPv6 with a header of that version after it."""
    etype, payload = h.u16(at + 12), at + 14
    for _ in range(2):
        tagged = _one_of(etype, _VLAN_TAGS)
        etype = np.where(tagged, h.u16(payload + 2), etype)
        payload = np.where(tagged, payload + 4, payload)
    first = h.u8(payload)
    ip4 = (etype == _ETHERTYPE_IPV4) & ((first >> 4) == 4) & ((first & 0xF) >= 5)
    ip6 = (etype == _ETHERTYPE_IPV6) & ((first >> 4) == 6)
    return (ip4 | ip6 | (etype == 0x806)) & h.has(payload, 1)


def _network(h: Headers, etype: np.ndarray, offset: np.ndarray) -> dict:
    """IPv4/IPv6 header fields at `offset` (where etype says IP), and where the transport
    header starts (after IPv4 options, or IPv6's hop-by-hop/routing/destination/fragment)."""
    version_ihl = h.u8(offset)
    ip4 = (etype == _ETHERTYPE_IPV4) & h.has(offset, 20) & ((version_ihl >> 4) == 4) & ((version_ihl & 0xF) >= 5)
    ip6 = (etype == _ETHERTYPE_IPV6) & h.has(offset, 40) & ((h.u8(offset) >> 4) == 6)
    first = h.u32(offset)
    net = {"ip4": ip4, "ip6": ip6, "etype": np.where(ip4 | ip6, 0, etype)}
    net["IPTos"] = np.where(ip4, (first >> 16) & 0xFF, np.where(ip6, (first >> 20) & 0xFF, 0))
    net["IPTTL"] = np.where(ip4, h.u8(offset + 8), np.where(ip6, h.u8(offset + 7), 0))
    net["IPv6FlowLabel"] = np.where(ip6, first & 0xFFFFF, 0)
    net["ip_length"] = np.where(ip4, h.u16(offset + 2), np.where(ip6, h.u16(offset + 4) + 40, -1))
    net["SrcAddr"] = _addresses(h, ip4, ip6, offset, 12, 8)
    net["DstAddr"] = _addresses(h, ip4, ip6, offset, 16, 24)
    fragment = h.u16(offset + 6)
    fragment_id = np.where(ip4, h.u16(offset + 4), 0)
    fragment_offset = np.where(ip4, fragment & 0x1FFF, 0)
    proto = np.where(ip4, h.u8(offset + 9), np.where(ip6, h.u8(offset + 6), 0))
    l4 = np.where(ip4, offset + (h.u8(offset) & 0xF) * 4, offset + 40)
    # RFC 8200 section 4.1 order: hop-by-hop, destination options, routing, fragment, AH (RFC
    # 4302, also after IPv4), destination options: six headers at most before the transport.
    for _ in range(6):
        ext = ip6 & _one_of(proto, (0, 43, 60)) & h.has(l4, 2)
        frag = ip6 & (proto == 44) & h.has(l4, 8)
        auth = (ip4 | ip6) & (proto == 51) & h.has(l4, 2)
        if not (ext.any() or frag.any() or auth.any()):
            break
        fragment_id = np.where(frag, h.u32(l4 + 4), fragment_id)
        fragment_offset = np.where(frag, h.u16(l4 + 2) >> 3, fragment_offset)
        next_proto = h.u8(l4)
        length = np.select([ext, frag, auth], [(h.u8(l4 + 1) + 1) * 8, 8, (h.u8(l4 + 1) + 2) * 4], 0)
        l4 = l4 + length
        proto = np.where(ext | frag | auth, next_proto, proto)
    net["IPFragmentID"], net["IPFragmentOffset"] = fragment_id, fragment_offset
    net["Proto"] = net["proto"] = np.where(ip4 | ip6, proto, 0)
    net["l4"] = l4
    net["l4_from_ip"] = l4 - offset
    net["first_fragment"] = fragment_offset == 0
    return net


def _addresses(h: Headers, ip4: np.ndarray, ip6: np.ndarray, offset: np.ndarray, at4: int,
               at6: int) -> np.ndarray:
    out = np.zeros((len(ip4), 16), np.uint8)
    out[ip4, 10:12] = 0xFF
    out[ip4, 12:] = h.take(offset + at4, 4)[ip4]
    out[ip6] = h.take(offset + at6, 16)[ip6]
    return out


def _decapsulate(h: Headers, mode: np.ndarray, outer: dict, link: _Link) -> tuple[dict, np.ndarray]:
    """The inner packet's network fields, and the rows whose packet is in the asked tunnel."""
    proto, l4 = outer["proto"], outer["l4"]
    ip = (outer["ip4"] | outer["ip6"]) & outer["first_fragment"]
    inner_etype = np.zeros(h.n, np.int64)
    inner_offset = l4.copy()
    ethernet = np.zeros(h.n, bool)
    # VXLAN: UDP to 4789, an 8-byte header with the I flag, then an Ethernet frame.
    vxlan = (mode == VXLAN) & ip & (proto == 17) & (h.u16(l4 + 2) == VXLAN_PORT) & ((h.u8(l4 + 8) & 0x08) != 0)
    ethernet |= vxlan
    inner_offset = np.where(vxlan, l4 + 16, inner_offset)
    # GRE: flags and version, protocol type, then the optional checksum, key and sequence words.
    flags, gre_type = h.u16(l4), h.u16(l4 + 2)
    gre = (mode == GRE) & ip & (proto == 47) & ((flags & 0x7) == 0)
    gre_length = 4 + 4 * (((flags & 0x8000) != 0).astype(np.int64) + ((flags & 0x2000) != 0)
                          + ((flags & 0x1000) != 0))
    gre_ip = gre & _one_of(gre_type, (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6))
    gre_ethernet = gre & (gre_type == _TRANSPARENT_ETHERNET)
    inner_etype = np.where(gre_ip, gre_type, inner_etype)
    ethernet |= gre_ethernet
    inner_offset = np.where(gre, l4 + gre_length, inner_offset)
    # IP in IP (protocol 4 / 41), and SRv6: IPv6 (its segment routing header already stepped
    # over with the other extension headers) carrying IPv4 or IPv6.
    in_ip = ((mode == IPIP) & ip) | ((mode == SRV6) & outer["ip6"])
    in_ip &= _one_of(proto, (4, 41))
    inner_etype = np.where(in_ip, np.where(proto == 4, _ETHERTYPE_IPV4, _ETHERTYPE_IPV6), inner_etype)
    if ethernet.any():
        inner_etype, inner_offset = _ethernet(h, ethernet, inner_etype, inner_offset, link)
    inner = _network(h, inner_etype, inner_offset)
    # A tunnel recognised by its headers counts even when the sampled bytes end before the
    # inner packet's header (its fields are then 0, its length from the outer one).
    tunneled = vxlan | gre_ip | gre_ethernet | in_ip
    outer_start = l4 - outer["l4_from_ip"]
    return inner, tunneled, inner_offset - outer_start


def _transport(h: Headers, out: dict, proto: np.ndarray, l4: np.ndarray, ok: np.ndarray,
               ip6: np.ndarray) -> None:
    ports = ok & _one_of(proto, (6, 17, 132)) & h.has(l4, 4)
    out["SrcPort"] = np.where(ports, h.u16(l4), 0)
    out["DstPort"] = np.where(ports, h.u16(l4 + 2), 0)
    tcp = ok & (proto == 6) & h.has(l4, 14)
    out["TCPFlags"] = np.where(tcp, h.u8(l4 + 13), 0)
    icmp = ok & h.has(l4, 2)
    icmp4, icmp6 = icmp & (proto == 1) & ~ip6, icmp & (proto == 58) & ip6
    icmp_type, icmp_code = h.u8(l4), h.u8(l4 + 1)
    out["ICMPv4Type"], out["ICMPv4Code"] = np.where(icmp4, icmp_type, 0), np.where(icmp4, icmp_code, 0)
    out["ICMPv6Type"], out["ICMPv6Code"] = np.where(icmp6, icmp_type, 0), np.where(icmp6, icmp_code, 0)


def scitags(flow_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SciTags (scitags.org) experiment and activity marked in IPv6 flow labels: of the 20 bits,
    counted from the most significant, bits 3-11 hold the experiment id bit-reversed and bits
    13-18 the activity id; bits 1-2, 12, 19-20 are entropy."""
    experiment = np.zeros(len(flow_label), np.int64)
    if not flow_label.any():  # (no IPv6 flow label in the call: nothing to unpack)
        return experiment, experiment.copy()
    reversed_experiment = (flow_label.astype(np.int64) >> 9) & 0x1FF
    for bit in range(9):
        experiment |= ((reversed_experiment >> bit) & 1) << (8 - bit)
    return experiment, (flow_label.astype(np.int64) >> 2) & 0x3F
