"""NetFlow v9 / IPFIX data records (a numpy structured view) → flow columns.

Runs once per template per decode call over all of that template's records, so everything
here is whole-column numpy. Bytes and Packets are as exported: NetFlow and IPFIX count L3
bytes (the IP packet, header included), which is what the `Bytes` column means everywhere.
"""

from __future__ import annotations

import numpy as np

from flows.decode import frames, metrics
from flows.decode.columns import ORIGIN, ListColumn, be_uint, mapped_v4, take_rows, v6
from flows.decode.elements import IE, MPLS_LABELS
from flows.decode.forwarding import juniper_exception_status
from flows.decode.templates import REVERSE_PEN, VARIABLE, Template

NTP_UNIX_OFFSET = 2208988800
INGRESS, EGRESS = 1, 2  # schema.DIRECTIONS codes


class Records:
    """Typed access to the mapped fields of a structured view of records."""

    def __init__(self, template: Template, view: np.ndarray) -> None:
        self.keys = template.keys
        self.view = view
        self.n = len(view)

    def has(self, ie: int, pen: int = 0) -> bool:
        return (pen, ie) in self.keys

    def raw(self, ie: int, pen: int = 0) -> np.ndarray | None:
        entry = self.keys.get((pen, ie))
        return None if entry is None else self.view[entry[0]]

    def uint(self, ie: int, pen: int = 0) -> np.ndarray | None:
        values = self.raw(ie, pen)
        if values is None:
            return None
        return be_uint(values) if values.ndim == 2 else values.astype(np.uint64)

    def section(self, ie: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A packet section element as (n, L) bytes and each record's section length."""
        entry = self.keys.get((0, ie))
        if entry is None:
            return None
        name, length = entry
        data = self.view[name]
        if length == VARIABLE:
            return data, self.view[f"{name}_len"].astype(np.int64)
        return data, np.full(self.n, length, np.int64)

    def first(self, *ies: int, pen: int = 0) -> np.ndarray | None:
        for ie in ies:
            values = self.uint(ie, pen)
            if values is not None:
                return values
        return None

    def column(self, *ies: int) -> np.ndarray | None:
        """The first of the elements present, for a column that takes it as it is: 1, 2, 4 and
        8-byte fields stay views of the records (assemble converts them while copying)."""
        for ie in ies:
            values = self.raw(ie)
            if values is not None:
                return be_uint(values) if values.ndim == 2 else values
        return None

    def address(self, ie4: int, ie6: int) -> np.ndarray | None:
        """(n, 16) addresses from an IPv4 and/or IPv6 element (IPv4 wins where it is set)."""
        a4, a6 = self.raw(ie4), self.raw(ie6)
        a4 = mapped_v4(a4) if a4 is not None and a4.shape[1:] == (4,) else None
        a6 = v6(a6) if a6 is not None and a6.shape[1:] == (16,) else None
        if a4 is not None and a6 is not None:
            return np.where((a4[:, 12:] != 0).any(axis=1)[:, None], a4, a6)
        return a4 if a4 is not None else a6


def flow_columns(template: Template, view: np.ndarray, ctx: dict) -> list[tuple[int, dict]]:
    """Parts (row count, columns) for one template's records: the flows, and for RFC 5103
    biflows a second part with the reverse counters as flows in the reverse direction."""
    r = Records(template, view)
    decapsulation = ctx.get("decapsulation")
    parsed, keep = _parsed_sections(r, decapsulation)
    if decapsulation is not None:
        r, ctx, parsed = _tunneled_only(r, template, ctx, parsed, keep)
        decapsulation = ctx["decapsulation"]
    n = r.n
    cols: dict[str, object] = {
        "TimeReceived": ctx["received"],
        ORIGIN: ctx["origin"],
        "ExporterAddress": np.broadcast_to(np.frombuffer(ctx["exporter"], np.uint8), (n, 16)),
        "SamplingRate": _sampling(r, ctx),
    }
    for name, ies in _AS_EXPORTED:
        _put(cols, name, r.column(*ies))
    _put(cols, "SrcAddr", r.address(IE.sourceIPv4Address, IE.sourceIPv6Address))
    _put(cols, "DstAddr", r.address(IE.destinationIPv4Address, IE.destinationIPv6Address))
    next_hop = r.address(IE.ipNextHopIPv4Address, IE.ipNextHopIPv6Address)
    _put(cols, "NextHop", next_hop if next_hop is not None
         else r.address(IE.bgpNextHopIPv4Address, IE.bgpNextHopIPv6Address))
    _put(cols, "SrcAddrNAT", r.address(IE.postNATSourceIPv4Address, IE.postNATSourceIPv6Address))
    _put(cols, "DstAddrNAT", r.address(IE.postNATDestinationIPv4Address, IE.postNATDestinationIPv6Address))
    status = r.uint(IE.forwardingStatus)
    _put(cols, "ForwardingStatus", None if status is None else status & np.uint64(0xFF))
    if status is None and template.cpid:
        _juniper_status(r, template, cols)
    direction = r.uint(IE.flowDirection)
    if direction is not None:
        cols["FlowDirection"] = np.select([direction == 0, direction == 1], [INGRESS, EGRESS], 0)
    cols["EType"] = _etype(r)
    _put(cols, "MPLSLabels", _mpls(r))
    _icmp(r, cols)
    _sections(r, cols, parsed, decapsulation)
    if "IPv6FlowLabel" in cols:
        cols["SciTagsExperiment"], cols["SciTagsActivity"] = frames.scitags(np.asarray(cols["IPv6FlowLabel"]))
    cols["TimeFlowStart"], cols["TimeFlowEnd"] = _times(r, ctx, pen=0)
    parts = [(n, cols)]
    reverse = _reverse(r, cols, ctx)
    if reverse is not None:
        parts.append(reverse)
    return parts


# Columns taken as exported: name → information elements, the first present wins
# (ingressPhysicalInterface 252 / egressPhysicalInterface 253 stand in for ingressInterface 10 /
# egressInterface 14 when a template carries only them, as IOS-XR's do).
# Cisco ASA NSEL and RFC 8158 firewall flows count the initiator's bytes and packets
# (initiatorOctets 231, initiatorPackets 298); the responder's (232, 299) become the reverse flow.
_OCTETS = (IE.octetDeltaCount, IE.postOctetDeltaCount, IE.octetTotalCount)
_PACKETS = (IE.packetDeltaCount, IE.postPacketDeltaCount, IE.packetTotalCount)
_AS_EXPORTED = (
    ("Bytes", (*_OCTETS, IE.initiatorOctets)), ("Packets", (*_PACKETS, IE.initiatorPackets)),
    ("Proto", (IE.protocolIdentifier,)), ("IPTos", (IE.ipClassOfService,)), ("TCPFlags", (IE.tcpControlBits,)),
    ("SrcPort", (IE.sourceTransportPort,)), ("DstPort", (IE.destinationTransportPort,)),
    ("SrcNetMask", (IE.sourceIPv4PrefixLength, IE.sourceIPv6PrefixLength)),
    ("DstNetMask", (IE.destinationIPv4PrefixLength, IE.destinationIPv6PrefixLength)),
    ("InIfIndex", (IE.ingressInterface, IE.ingressPhysicalInterface)),
    ("OutIfIndex", (IE.egressInterface, IE.egressPhysicalInterface)),
    ("SrcAS", (IE.bgpSourceAsNumber,)), ("DstAS", (IE.bgpDestinationAsNumber,)),
    ("SrcVlan", (IE.vlanId, IE.dot1qVlanId)), ("DstVlan", (IE.postVlanId, IE.postDot1qVlanId)),
    ("SrcMAC", (IE.sourceMacAddress,)), ("DstMAC", (IE.destinationMacAddress, IE.postDestinationMacAddress)),
    ("IPTTL", (IE.ipTTL, IE.minimumTTL, IE.maximumTTL)), ("IPv6FlowLabel", (IE.flowLabelIPv6,)),
    ("IPFragmentID", (IE.fragmentIdentification,)), ("IPFragmentOffset", (IE.fragmentOffset,)),
    ("IngressVRFID", (IE.ingressVRFID,)), ("EgressVRFID", (IE.egressVRFID,)),
    ("SrcPortNAT", (IE.postNAPTSourceTransportPort,)), ("DstPortNAT", (IE.postNAPTDestinationTransportPort,)),
    ("FirewallEvent", (IE.firewallEvent, IE.ciscoFirewallEvent)),
)

# Packet sections, by preference: the frame (IE 315, 104) or the IP packet (IE 313).
_SECTIONS = ((IE.dataLinkFrameSection, frames.ETHERNET), (IE.layer2packetSectionData, frames.ETHERNET),
             (IE.ipHeaderPacketSection, None))


def _packet_section(r: Records) -> tuple[frames.Headers, np.ndarray] | None:
    for ie, protocol in _SECTIONS:
        section = r.section(ie)
        if section is not None:
            data, length = section
            headers = frames.Headers.from_sections(data, length)
            if protocol is None:  # an IP packet: its version says which
                version = headers.u8(np.zeros(r.n, np.int64)) >> 4
                kind = np.select([version == 4, version == 6], [frames.IPV4, frames.IPV6], 0)
            else:
                kind = np.full(r.n, protocol, np.int64)
            return headers, kind
    return None


def _parsed_sections(r: Records, decapsulation: np.ndarray | None) -> tuple[dict | None, np.ndarray]:
    """The parsed packet section of each record (None when the template has none), and the
    records that give a flow (with a decapsulation mode: those whose packet is in its tunnel)."""
    found = _packet_section(r) if r.n else None
    if found is None:
        keep = np.ones(r.n, bool) if decapsulation is None else decapsulation == frames.NONE
        return None, keep
    headers, kind = found
    return frames.parse(headers, kind, decapsulation=decapsulation)


def _sections(r: Records, cols: dict, parsed: dict | None, decapsulation: np.ndarray | None) -> None:
    """The columns a sampled packet's section gives that the record's own elements did not
    (as the reference does: Bytes is the packet's IP length and Packets 1, beside the
    sampling rate). A decapsulated packet's inner header wins over the record's own elements,
    which describe the tunnel; exported counters stay."""
    if parsed is None:
        return
    parsed = dict(parsed)
    length = parsed.pop("Bytes")
    if "Bytes" not in cols:
        cols["Bytes"] = length
        cols["Packets"] = (length > 0).astype(np.uint64)
    inner = np.zeros(r.n, bool) if decapsulation is None else decapsulation != frames.NONE
    etype = parsed.pop("EType")
    cols["EType"] = np.where((np.asarray(cols["EType"]) != 0) & ~inner, cols["EType"], etype)
    if "MPLSLabels" in cols:
        del parsed["MPLSLabels"]
    for name, values in parsed.items():
        if name not in cols:
            cols[name] = values
        elif inner.any():
            cols[name] = np.where(inner[:, None] if values.ndim == 2 else inner, values, np.asarray(cols[name]))


def _tunneled_only(r: Records, template: Template, ctx: dict, parsed: dict | None,
                   keep: np.ndarray) -> tuple[Records, dict, dict | None]:
    """With a decapsulation mode, only the records whose packet section is in such a tunnel
    (the others counted as not_encapsulated), their context and their parsed sections."""
    if keep.all():
        return r, ctx, parsed
    metrics.error("not_encapsulated", int(np.count_nonzero(~keep)))
    per_record = {k: v for k, v in ctx.items() if isinstance(v, np.ndarray) and v.shape[:1] == (r.n,)}
    return (Records(template, r.view[keep]), {**ctx, **take_rows(per_record, keep)},
            None if parsed is None else take_rows(parsed, keep))


def _juniper_status(r: Records, template: Template, cols: dict) -> None:
    """ForwardingStatus from a Juniper commonPropertiesId forwarding exception (the first
    2-byte occurrence of that type in each record)."""
    status = np.zeros(r.n, np.int64)
    found = np.zeros(r.n, bool)
    for name in template.cpid:
        exception, value = juniper_exception_status(r.view[name])
        status = np.where(exception & ~found, value, status)
        found |= exception
    if found.any():
        cols["ForwardingStatus"] = status


def _put(cols: dict, name: str, values: object) -> None:
    if values is not None:
        cols[name] = values


def _etype(r: Records) -> np.ndarray:
    ether = r.uint(IE.ethernetType)
    version = r.uint(IE.ipVersion)
    v4, v6 = IE.sourceIPv4Address, IE.sourceIPv6Address
    if version is not None:
        etype = np.where(version == 6, 0x86DD, np.where(version == 4, 0x800, 0)).astype(np.uint32)
    elif r.has(v4) and r.has(v6):
        etype = np.where((r.raw(v4) != 0).any(axis=1), 0x800, 0x86DD).astype(np.uint32)
    else:
        etype = np.full(r.n, 0x86DD if r.has(v6) else 0x800 if r.has(v4) else 0, np.uint32)
    if ether is not None:
        etype = np.where(ether != 0, ether, etype)
    return etype


def _icmp(r: Records, cols: dict) -> None:
    """ICMP type/code from icmpTypeCode (32, 139), type/code elements (176–179), or else the
    destination port, where NetFlow v5 and several exporters encode type * 256 + code."""
    proto = r.uint(IE.protocolIdentifier)
    if proto is None:
        return
    port = r.uint(IE.destinationTransportPort)
    port = np.zeros(r.n, np.uint64) if port is None else port

    def combined(pair_ie, type_ie, code_ie, fallback):
        value = r.uint(pair_ie)
        if value is not None:
            return value
        t, c = r.uint(type_ie), r.uint(code_ie)
        if t is not None:
            return (t << np.uint64(8)) | (c if c is not None else np.uint64(0))
        return fallback

    v4 = combined(IE.icmpTypeCodeIPv4, IE.icmpTypeIPv4, IE.icmpCodeIPv4, port)
    v6tc = combined(IE.icmpTypeCodeIPv6, IE.icmpTypeIPv6, IE.icmpCodeIPv6,
                    v4 if r.has(IE.icmpTypeCodeIPv4) else port)
    is4, is6 = proto == 1, proto == 58
    if is4.any():
        cols["ICMPv4Type"] = np.where(is4, v4 >> np.uint64(8), 0) & 0xFF
        cols["ICMPv4Code"] = np.where(is4, v4, 0) & 0xFF
    if is6.any():
        cols["ICMPv6Type"] = np.where(is6, v6tc >> np.uint64(8), 0) & 0xFF
        cols["ICMPv6Code"] = np.where(is6, v6tc, 0) & 0xFF


def _mpls(r: Records) -> ListColumn | None:
    """Label stack entries 70–79 (3 bytes: label, TC, bottom-of-stack) → labels, top first."""
    entries = [r.uint(ie) for ie in MPLS_LABELS if r.has(ie)]
    if not entries:
        return None
    stack = np.stack(entries, axis=1)
    present = stack != 0
    bottom = (stack & np.uint64(1)).astype(bool)
    after_bottom = np.zeros_like(present)
    after_bottom[:, 1:] = np.cumsum(bottom, axis=1)[:, :-1] > 0
    keep = present & ~after_bottom
    offsets = np.zeros(r.n + 1, np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return ListColumn(offsets, (stack[keep] >> np.uint64(4)).astype(np.uint32))


def _ntp_ms(values: np.ndarray) -> np.ndarray:
    seconds = (values >> np.uint64(32)).astype(np.int64) - NTP_UNIX_OFFSET
    fraction = (values & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return seconds * 1000 + ((fraction * 1000) >> 32)


def _times(r: Records, ctx: dict, pen: int) -> tuple[np.ndarray, np.ndarray]:
    """Flow start/end in ms. Absolute elements are used as exported; sysUptime-relative ones
    are placed against the header (v9) or systemInitTimeMilliseconds (IPFIX). Times far from
    the export time are kept: an exporter's clock is the exporter's business, not ours."""
    export = ctx["export_ms"]
    return _time(r, ctx, export, *_START, pen), _time(r, ctx, export, *_END, pen)


# Flow start / end elements, in the order _time prefers them.
_START = (IE.flowStartMilliseconds, IE.flowStartSeconds, IE.flowStartMicroseconds, IE.flowStartNanoseconds,
          IE.flowStartDeltaMicroseconds, IE.flowStartSysUpTime)
_END = (IE.flowEndMilliseconds, IE.flowEndSeconds, IE.flowEndMicroseconds, IE.flowEndNanoseconds,
        IE.flowEndDeltaMicroseconds, IE.flowEndSysUpTime)


def _time(r: Records, ctx: dict, export: np.ndarray, ms_ie: int, s_ie: int, us_ie: int, ns_ie: int,
          delta_ie: int, uptime_ie: int, pen: int) -> np.ndarray:
    value = r.uint(ms_ie, pen)
    if value is not None:
        return value.astype(np.int64)
    value = r.uint(s_ie, pen)
    if value is not None:
        return value.astype(np.int64) * 1000
    for ie in (us_ie, ns_ie):
        value = r.uint(ie, pen)
        if value is not None:
            return _ntp_ms(value)
    value = r.uint(delta_ie, pen)
    if value is not None:
        return export - (value // np.uint64(1000)).astype(np.int64)
    value = r.uint(uptime_ie, pen)
    if value is None:
        return export
    if ctx["version"] == 9:
        # Signed 32-bit difference: survives the sysUptime wrap after 49.7 days.
        ago = ((ctx["uptime_ms"] - value.astype(np.int64)) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        return export - ago.astype(np.int64)
    init = r.uint(IE.systemInitTimeMilliseconds)
    if init is not None:
        return init.astype(np.int64) + value.astype(np.int64)
    if ctx["system_init_ms"] is not None:
        return ctx["system_init_ms"] + value.astype(np.int64)
    return export


def _sampling(r: Records, ctx: dict) -> np.ndarray:
    """Per-record sampling rate: from the record's own sampling elements, else its sampler id
    looked up in options data, else the exporter's (observation domain's) rate; 0 = not said."""
    default = np.full(r.n, ctx["domain_rate"], np.uint64)
    rate = r.first(IE.samplingInterval, IE.samplerRandomInterval)
    if rate is None and r.has(IE.samplingPacketInterval):
        interval = r.uint(IE.samplingPacketInterval)
        space = r.uint(IE.samplingPacketSpace) if r.has(IE.samplingPacketSpace) else np.zeros(r.n, np.uint64)
        rate = np.where(interval > 0, (interval + space) // np.maximum(interval, 1), 0)
    if rate is None:
        sampler = r.first(IE.samplerId, IE.selectorId)
        if sampler is None or not ctx["sampler_rates"]:
            return default
        lookup = ctx["sampler_rates"]
        unique, inverse = np.unique(sampler, return_inverse=True)
        rates = np.array([lookup.get(int(s), 0) for s in unique], np.uint64)
        rate = rates[inverse]
    return np.where(rate > 0, rate, default).astype(np.uint64)


_SWAPS = (("SrcAddr", "DstAddr"), ("SrcPort", "DstPort"), ("SrcNetMask", "DstNetMask"),
          ("SrcAS", "DstAS"), ("InIfIndex", "OutIfIndex"), ("SrcVlan", "DstVlan"), ("SrcMAC", "DstMAC"))


def _reverse(r: Records, forward: dict, ctx: dict) -> tuple[int, dict] | None:
    """RFC 5103: the reverse counters of a biflow as a flow of their own, source and
    destination swapped; rows without reverse traffic give no reverse flow."""
    packets = r.first(*_PACKETS, pen=REVERSE_PEN)
    octets = r.first(*_OCTETS, pen=REVERSE_PEN)
    if packets is None and octets is None:  # a firewall flow's responder side
        packets, octets = r.first(IE.responderPackets), r.first(IE.responderOctets)
    if packets is None and octets is None:
        return None
    packets = np.zeros(r.n, np.uint64) if packets is None else packets
    octets = np.zeros(r.n, np.uint64) if octets is None else octets
    keep = (packets > 0) | (octets > 0)
    rows = np.nonzero(keep)[0]
    cols = {}
    for name, values in forward.items():
        if isinstance(values, ListColumn):
            continue  # label stacks are per direction; the reverse one is not exported
        cols[name] = np.asarray(values)[rows]
    for a, b in _SWAPS:
        if a in forward or b in forward:
            cols[a], cols[b] = cols.pop(b, None), cols.pop(a, None)
            for name in (a, b):
                if cols[name] is None:
                    del cols[name]
    cols["Bytes"], cols["Packets"] = octets[rows], packets[rows]
    flags = r.uint(IE.tcpControlBits, REVERSE_PEN)
    cols["TCPFlags"] = flags[rows] if flags is not None else np.zeros(len(rows), np.uint64)
    start, end = _time(r, ctx, ctx["export_ms"], *_START, REVERSE_PEN), \
        _time(r, ctx, ctx["export_ms"], *_END, REVERSE_PEN)
    if any(r.has(ie, REVERSE_PEN) for ie in (IE.flowStartMilliseconds, IE.flowStartSeconds, IE.flowStartSysUpTime)):
        cols["TimeFlowStart"], cols["TimeFlowEnd"] = start[rows], end[rows]
    direction = cols.get("FlowDirection")
    if direction is not None:
        cols["FlowDirection"] = np.select([direction == INGRESS, direction == EGRESS], [EGRESS, INGRESS], 0)
    return len(rows), cols
