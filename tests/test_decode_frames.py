"""Packets inside flow records, as real routers export them: sFlow raw headers and IPFIX/NetFlow
v9 packet sections (IE 315 dataLinkFrameSection, IE 313 ipHeaderPacketSection), with QinQ, MPLS
(explicit null, Ethernet over MPLS with and without the RFC 4385 control word), tunnels a
listener decapsulates (VXLAN, GRE, IP-in-IP, SRv6), Juniper's commonPropertiesId, NAT and
firewall elements, and the IPv6 flow label with SciTags marks.

The packets are scapy's; the sFlow samples and IPFIX sets are packed from the sFlow v5 and RFC
7011 layouts; expected values are the packets' own fields, not decoder output.
"""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrSegmentRouting
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from flows.decode import FlowDecoder, metrics
from flows.decode.frames import DECAPSULATIONS
from tests.test_decode_scapy import EXPORT, _ipfix, _ipfix_template, _set, ip
from tests.test_decode_sflow import _datagram, _flow_sample, _raw_header

INNER = IP(src="198.51.100.1", dst="198.51.100.2", ttl=62, tos=0x20, id=41037) / TCP(sport=443, dport=55427, flags="A")
INNER6 = IPv6(src="2001:db8::10", dst="2001:db8::20", hlim=50) / UDP(sport=5000, dport=6000)
OUTER = dict(src="192.0.2.1", dst="192.0.2.2")


def _ether(**fields) -> Ether:
    # (with no destination MAC scapy spends seconds trying to resolve one)
    return Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb", **fields)


def _sflow(frame: bytes, decapsulation: str = "none") -> list[dict]:
    payload = _datagram([_flow_sample([_raw_header(frame, stripped=0)], rate=1000)])
    return FlowDecoder().decode_many([(payload, "192.0.2.50", EXPORT)],
                                     DECAPSULATIONS.index(decapsulation)).to_pylist()


def _one(frame: bytes, decapsulation: str = "none") -> dict:
    (flow,) = _sflow(frame, decapsulation)
    return flow


def _is_inner(flow: dict, packet=INNER) -> None:
    assert (ip(flow["SrcAddr"]), ip(flow["DstAddr"])) == (packet.src, packet.dst)
    assert flow["Bytes"] == len(packet)
    if packet is INNER:
        assert (flow["Proto"], flow["SrcPort"], flow["DstPort"], flow["TCPFlags"]) == (6, 443, 55427, 16)
        assert (flow["IPTTL"], flow["IPTos"], flow["IPFragmentID"], flow["EType"]) == (62, 0x20, 41037, 0x800)


# -- link layer -------------------------------------------------------------------------------

def test_qinq_keeps_the_customer_tag() -> None:
    flow = _one(bytes(_ether() / Dot1AD(vlan=100) / Dot1Q(vlan=200) / INNER))
    assert (flow["SrcVlan"], flow["DstVlan"]) == (200, 200)
    _is_inner(flow)


@pytest.mark.parametrize("label, packet, etype", [(0, INNER, 0x800), (2, INNER6, 0x86DD)])
def test_mpls_explicit_null(label, packet, etype) -> None:
    """Labels 0 and 2 (RFC 3032): an IPv4 / IPv6 packet follows the bottom of the stack."""
    flow = _one(bytes(_ether() / MPLS(label=3000, s=0) / MPLS(label=label, s=1) / packet))
    assert (flow["MPLSLabels"], flow["EType"]) == ([3000, label], etype)
    _is_inner(flow, packet)


@pytest.mark.parametrize("control_word", [True, False])
def test_ethernet_over_mpls_with_and_without_control_word(control_word) -> None:
    """EVPN / pseudowire: the customer's frame after the labels (RFC 4448), behind a 4-byte
    control word whose first nibble is 0 (RFC 4385) or directly."""
    customer = Ether(src="02:00:00:00:00:04", dst="02:00:00:00:00:03") / INNER
    cw = b"\x00\x00\x00\x00" if control_word else b""
    frame = bytes(Ether(src="02:aa:00:00:00:01", dst="02:aa:00:00:00:02") / MPLS(label=300012, s=0)
                  / MPLS(label=17, s=1)) + cw + bytes(customer)
    flow = _one(frame)
    assert flow["MPLSLabels"] == [300012, 17]
    assert (flow["SrcMAC"], flow["DstMAC"]) == (0x020000000004, 0x020000000003)
    _is_inner(flow)


def test_invalid_payload_after_mpls_gives_no_addresses() -> None:
    """First nibble 5 and no plausible Ethernet header: neither IP nor a pseudowire frame."""
    flow = _one(bytes(_ether() / MPLS(label=40, s=1)) + b"\x55" * 60)
    assert flow["MPLSLabels"] == [40]
    assert (flow["EType"], flow["Proto"], flow["SrcAddr"]) == (0, 0, bytes(16))


def test_ipv6_flow_label_fragments_and_scitags() -> None:
    """SciTags marks: experiment bits 3-11 of the label reversed, activity bits 13-18
    (flowd-go's and the WLCG draft's layout): experiment 2 / activity 5 is label 0x10014."""
    flow = _one(bytes(_ether() / IPv6(src="2001:db8::1", dst="2001:db8::2", fl=0x10014 | 0xC0103)
                      / IPv6ExtHdrFragment(id=0xDEADBEEF, offset=0, m=1) / UDP(sport=1, dport=2)))
    assert flow["IPv6FlowLabel"] == 0x10014 | 0xC0103
    assert (flow["SciTagsExperiment"], flow["SciTagsActivity"]) == (2, 5)
    assert (flow["IPFragmentID"], flow["IPFragmentOffset"], flow["DstPort"]) == (0xDEADBEEF, 0, 2)
    later = _one(bytes(_ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=7, frag=185) / (b"x" * 40)))
    assert (later["IPFragmentID"], later["IPFragmentOffset"], later["SrcPort"]) == (7, 185, 0)


# -- decapsulation ----------------------------------------------------------------------------

TUNNELS = {
    "vxlan": _ether() / IP(**OUTER) / UDP(sport=49152, dport=4789) / VXLAN(vni=1001)
             / Ether(src="02:00:00:00:00:04", dst="02:00:00:00:00:03") / Dot1Q(vlan=300) / INNER,
    "gre": _ether() / IP(**OUTER) / GRE(key_present=1, key=99) / INNER,
    "gre6": _ether() / IPv6(src="2001:db8::a", dst="2001:db8::b") / GRE(chksum_present=1, seqnum_present=1) / INNER,
    "ipip": _ether() / IP(**OUTER) / INNER,
    "ipip6in4": _ether() / IP(**OUTER) / INNER6,
    "srv6": _ether() / IPv6(src="2001:db8::a", dst="fc00::1:d4")
            / IPv6ExtHdrSegmentRouting(addresses=["fc00::1:d4", "fc00::2:d4"], segleft=1) / INNER,
    "srv6-reduced": _ether() / IPv6(src="2001:db8::a", dst="fc00::1:d6") / INNER6,
}
MODE = {"gre6": "gre", "ipip6in4": "ipip", "srv6-reduced": "srv6"}


@pytest.mark.parametrize("tunnel", sorted(TUNNELS))
def test_decapsulation_takes_the_inner_packet(tunnel) -> None:
    packet = TUNNELS[tunnel]
    mode = MODE.get(tunnel, tunnel)
    inner = INNER6 if tunnel in ("ipip6in4", "srv6-reduced") else INNER
    flow = _one(bytes(packet), mode)
    _is_inner(flow, inner)
    if tunnel == "vxlan":
        assert (flow["SrcMAC"], flow["SrcVlan"]) == (0x020000000004, 300)
    outer = _one(bytes(packet))  # without decapsulation the outer packet is the flow
    assert ip(outer["SrcAddr"]) in ("192.0.2.1", "2001:db8::a")


@pytest.mark.parametrize("mode", DECAPSULATIONS[1:])
def test_a_packet_in_no_such_tunnel_gives_no_flow_and_is_counted(mode) -> None:
    before = metrics.ERRORS_BY_REASON["not_encapsulated"]._value.get()
    assert _sflow(bytes(_ether() / INNER), mode) == []
    assert metrics.ERRORS_BY_REASON["not_encapsulated"]._value.get() == before + 1


def test_the_wrong_mode_does_not_decapsulate() -> None:
    assert _sflow(bytes(TUNNELS["gre"]), "vxlan") == []


# -- IPFIX packet sections ---------------------------------------------------------------------

def _ipfix_flows(fields: list[tuple], values: bytes, options: bytes = b"", decapsulation: str = "none") -> list[dict]:
    message = _ipfix(options + _ipfix_template(400, fields) + _set(400, values))
    return FlowDecoder().decode_many([(message, "198.51.100.30", EXPORT)],
                                     DECAPSULATIONS.index(decapsulation)).to_pylist()


def _varlen(data: bytes) -> bytes:
    return (bytes([len(data)]) if len(data) < 255 else b"\xff" + struct.pack("!H", len(data))) + data


def test_a_record_of_only_a_variable_length_frame_section() -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=12)
                  / MPLS(label=16, s=1) / INNER)
    short = bytes(_ether() / IP(src="10.9.9.9", dst="10.8.8.8") / ICMP(type=8, code=0))
    flows = _ipfix_flows([(315, 65535)], _varlen(frame) + _varlen(short))
    assert len(flows) == 2
    first, second = flows
    _is_inner(first)
    assert (first["Packets"], first["MPLSLabels"], first["SrcVlan"]) == (1, [16], 12)
    assert (first["SrcMAC"], first["DstMAC"]) == (0x020000000001, 0x020000000002)
    assert (ip(second["SrcAddr"]), second["Proto"], second["ICMPv4Type"], second["Bytes"]) == ("10.9.9.9", 1, 8, 28)


def test_a_fixed_length_frame_section_longer_than_the_header_parser_reads() -> None:
    frame = bytes(_ether() / INNER / (b"p" * 400))
    flows = _ipfix_flows([(10, 4), (312, 2), (315, len(frame))], struct.pack("!IH", 9, len(frame)) + frame)
    (flow,) = flows
    assert flow["InIfIndex"] == 9 and flow["Bytes"] == len(INNER) + 400
    assert (ip(flow["SrcAddr"]), flow["DstPort"]) == ("198.51.100.1", 55427)


def test_ip_header_packet_section() -> None:
    flows = _ipfix_flows([(14, 4), (313, 65535)], struct.pack("!I", 3) + _varlen(bytes(INNER6)))
    (flow,) = flows
    assert (flow["OutIfIndex"], flow["EType"], ip(flow["DstAddr"]), flow["DstPort"]) == (3, 0x86DD, "2001:db8::20", 6000)


def test_exported_elements_win_over_the_section() -> None:
    fields = [(8, 4), (1, 8), (2, 8), (315, 65535)]
    flows = _ipfix_flows(fields, bytes([10, 7, 7, 7]) + struct.pack("!QQ", 5000, 4) + _varlen(bytes(_ether() / INNER)))
    (flow,) = flows
    assert (ip(flow["SrcAddr"]), flow["Bytes"], flow["Packets"]) == ("10.7.7.7", 5000, 4)
    assert ip(flow["DstAddr"]) == "198.51.100.2"  # not exported: from the packet


def test_ipfix_frames_are_decapsulated_too() -> None:
    flows = _ipfix_flows([(315, 65535)], _varlen(bytes(TUNNELS["vxlan"])) + _varlen(bytes(_ether() / INNER6)),
                         decapsulation="vxlan")
    (flow,) = flows  # the second record's packet is in no tunnel
    _is_inner(flow)


# Junos inline monitoring (resiliency exception reporting): six commonPropertiesId fields
# (PEN 2636, IE 137), each a 6-bit type and a value; type 2 (2 bytes) is the exception code.
JUNIPER_FIELDS = [(137, 4, 2636), (137, 2, 2636), (137, 4, 2636), (137, 4, 2636), (137, 4, 2636), (137, 4, 2636),
                  (10, 4), (14, 4), (61, 1), (312, 2), (315, 65535)]


def _juniper_record(exception: int, frame: bytes) -> bytes:
    cpid = struct.pack("!IHIIII", 1 << 26, (2 << 10) | exception, 3 << 26, 4 << 26, 5 << 26, (6 << 26) | 360)
    return cpid + struct.pack("!IIBH", 576, 0, 0, len(frame)) + _varlen(frame)


def test_juniper_cpid_options_and_data() -> None:
    # the options template and data Junos sends beside: exportingProcessId scope, samplingInterval
    options = _ipfix_template(512, [(144, 4), (34, 4)], set_id=3)
    options = options[:8] + b"\x00\x01" + options[8:]  # the scope field count
    options = struct.pack("!HH", 3, len(options)) + options[4:]
    options += _set(512, struct.pack("!II", 1, 10))
    frame = bytes(_ether() / MPLS(label=1000001, s=1) / IP(src="10.0.36.1", dst="127.0.0.1", ttl=1) / UDP(sport=55217, dport=3503))
    flows = _ipfix_flows(JUNIPER_FIELDS, _juniper_record(194, frame) + _juniper_record(0, frame), options)
    dropped, forwarded = flows
    assert (dropped["ForwardingStatus"], forwarded["ForwardingStatus"]) == (128, 64)
    assert (dropped["InIfIndex"], dropped["SamplingRate"], dropped["MPLSLabels"]) == (576, 10, [1000001])
    assert (ip(dropped["SrcAddr"]), dropped["DstPort"], dropped["IPTTL"]) == ("10.0.36.1", 3503, 1)


def test_nat_vrf_and_firewall_elements() -> None:
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (225, 4), (226, 4), (227, 2), (228, 2), (234, 4),
              (235, 4), (233, 1), (231, 8), (232, 8), (298, 8), (299, 8)]
    values = (bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HHB", 1024, 80, 6) + bytes([203, 0, 113, 1, 203, 0, 113, 2])
              + struct.pack("!HHIIBQQQQ", 40000, 8080, 11, 12, 1, 1500, 90000, 10, 60))
    initiator, responder = _ipfix_flows(fields, values)
    assert (ip(initiator["SrcAddrNAT"]), ip(initiator["DstAddrNAT"])) == ("203.0.113.1", "203.0.113.2")
    assert (initiator["SrcPortNAT"], initiator["DstPortNAT"]) == (40000, 8080)
    assert (initiator["IngressVRFID"], initiator["EgressVRFID"], initiator["FirewallEvent"]) == (11, 12, 1)
    assert (initiator["Bytes"], initiator["Packets"], initiator["SrcPort"]) == (1500, 10, 1024)
    # the responder's counters are the reverse flow
    assert (responder["Bytes"], responder["Packets"], responder["SrcPort"], ip(responder["SrcAddr"])) == \
        (90000, 60, 80, "10.0.0.2")


def test_cisco_nsel_event_in_netflow_v9() -> None:
    """NetFlow v9 field 40005 (NF_F_FW_EVENT): 3 = flow denied."""
    template = struct.pack("!HH", 0, 20) + struct.pack("!HHHHHHHH", 300, 3, 8, 4, 12, 4, 40005, 1)
    data = struct.pack("!HH", 300, 16) + bytes([10, 0, 0, 1, 10, 0, 0, 2, 3]) + bytes(3)
    sets = template + data
    payload = struct.pack("!HHIIII", 9, 2, 1000, EXPORT, 0, 0) + sets
    (flow,) = FlowDecoder().decode(payload, "198.51.100.31", EXPORT).to_pylist()
    assert (flow["FirewallEvent"], ip(flow["DstAddr"])) == (3, "10.0.0.2")


def test_flow_label_element_and_scitags() -> None:
    fields = [(27, 16), (28, 16), (31, 4)]
    values = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!I", 196664)
    (flow,) = _ipfix_flows(fields, values)
    assert (flow["SciTagsExperiment"], flow["SciTagsActivity"]) == (3, 14)  # 196664: CMS's example


def test_a_mistyped_column_name_raises_instead_of_losing_its_data() -> None:
    import numpy as np

    from flows.decode.columns import UnknownColumn, assemble

    assert assemble([(1, {"SrcPort": np.array([7])})]).column("SrcPort").to_pylist() == [7]
    with pytest.raises(UnknownColumn, match="SrcPrt"):
        assemble([(1, {"SrcPrt": np.array([7])})])


# -- found by an adversarial read -------------------------------------------------------------

def test_an_ipv4_header_length_below_five_words_is_not_ipv4() -> None:
    frame = bytearray(bytes(_ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1111, dport=2222)))
    frame[14] = 0x44  # IHL 4: RFC 791's minimum is 5
    flow = _one(bytes(frame))
    assert (flow["SrcPort"], flow["DstPort"], flow["SrcAddr"]) == (0, 0, bytes(16))


def test_every_extension_header_of_rfc_8200_order_and_ah_are_stepped_over() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
    from scapy.layers.ipsec import AH

    six = _one(bytes(_ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                     / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(id=77, m=1) / TCP(sport=7, dport=8)))
    assert (six["Proto"], six["SrcPort"], six["DstPort"], six["IPFragmentID"]) == (6, 7, 8, 77)
    # RFC 4302: a 24-byte AH says (4 + 2) 32-bit words
    ah = _one(bytes(_ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=51)
                    / AH(nh=6, payloadlen=4, spi=1, icv=b"\x00" * 12) / TCP(sport=9, dport=10)))
    assert (ah["Proto"], ah["SrcPort"], ah["DstPort"]) == (6, 9, 10)


def test_a_label_stack_longer_than_eight_gives_no_ip_fields() -> None:
    stack = _ether()
    for label in range(100, 108):
        stack = stack / MPLS(label=label, s=0)
    frame = bytes(stack / MPLS(label=0x45000, s=1) / INNER)
    flow = _one(frame)
    assert flow["MPLSLabels"] == list(range(100, 108))
    assert (flow["EType"], flow["SrcAddr"], flow["IPFragmentID"]) == (0, bytes(16), 0)
    assert flow["Bytes"] == len(frame) - 14 - 8 * 4  # sFlow's fallback: the frame less what was read


@pytest.mark.parametrize("mac", ["00:22:22:22:22:22", "64:87:88:00:00:01", "45:00:00:00:00:01"])
def test_ethernet_over_mpls_without_control_word_whatever_the_mac_first_nibble(mac) -> None:
    """RFC 4385 section 3: the first nibble of a pseudowire without control word is the MAC's;
    the frame is recognised by its ethertype and the IP header after it."""
    customer = Ether(src="00:11:11:11:11:11", dst=mac) / Dot1Q(vlan=10) / INNER
    flow = _one(bytes(_ether() / MPLS(label=17, s=1) / customer))
    assert (flow["SrcVlan"], flow["SrcMAC"], flow["DstMAC"]) == (10, 0x001111111111, int(mac.replace(":", ""), 16))
    _is_inner(flow)


def test_a_tunnel_whose_inner_header_was_not_sampled_still_counts() -> None:
    """sFlow agents send 128 header bytes: an SRv6 packet with a 3-segment SRH leaves none of
    the inner IPv6 header. The flow stays, its length the outer one less the tunnel headers."""
    srh = IPv6ExtHdrSegmentRouting(addresses=["fc00::1", "fc00::2", "fc00::3"], segleft=2)
    packet = _ether() / IPv6(src="2001:db8::a", dst="fc00::3") / srh / INNER6 / (b"p" * 200)
    flows = _sflow(bytes(packet)[:128], "srv6")
    assert len(flows) == 1 and flows[0]["SrcAddr"] == bytes(16)
    assert flows[0]["Bytes"] == len(INNER6) + 200


def test_one_exporter_on_two_listeners_decapsulates_only_the_tunnel_listeners_datagrams() -> None:
    from flows.decode.decoder import decode_with_origins
    from flows.decode.state import ExporterState

    message = _ipfix(_ipfix_template(400, [(315, 65535)]) + _set(400, _varlen(bytes(_ether() / INNER))))
    for modes in ((0, 1), (1, 0)):
        batch, origins = decode_with_origins(ExporterState("198.51.100.40"),
                                             [(message, "", EXPORT, tag, mode) for tag, mode in zip((1, 2), modes)])
        assert origins.tolist() == [1 + modes.index(0)]  # the datagram of the plain listener only


def test_a_decapsulated_section_wins_over_the_records_tunnel_elements() -> None:
    fields = [(8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (315, 65535)]
    outer = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!BHH", 17, 49152, 4789)
    (flow,) = _ipfix_flows(fields, outer + _varlen(bytes(TUNNELS["vxlan"])), decapsulation="vxlan")
    _is_inner(flow)
