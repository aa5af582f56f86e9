"""Encodings real routers use and software exporters do not, built from the sFlow v5 and IPFIX
layouts (hand-packed XDR and IPFIX sets): sFlow's internal and non-ifIndex interface values, the
"unknown" VLAN of extended-switch records, extended-gateway records of flows that start or end
at the router, and IPFIX templates with only the physical-interface elements (IE 252/253)."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from flows.decode import FlowDecoder
from tests.test_decode_scapy import EXPORT, _ipfix, _ipfix_template, _set
from tests.test_decode_sflow import _datagram, _flow_sample, _raw_header, _record

INTERNAL = 0x3FFFFFFF  # sFlow v5: "the packet originated or terminated in the device itself"
FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.1.0.1", dst="10.2.0.2") / UDP(sport=53, dport=5353) / (b"d" * 40))


def _one(samples: list[bytes]) -> dict:
    (flow,) = FlowDecoder().decode(_datagram(samples), "198.51.100.9", EXPORT).to_pylist()
    return flow


@pytest.mark.parametrize("expanded", [False, True])
@pytest.mark.parametrize("input_, output, in_if, out_if, discarded", [
    (7, 9, 7, 9, False),
    (INTERNAL, 9, 0, 9, False),          # sent by the device itself
    (7, INTERNAL, 7, 0, False),          # terminated in the device
    (7, (1 << 30) | 258, 7, 0, True),    # format 1: discarded, reason 258
    (7, (2 << 30) | 3, 7, 0, False),     # format 2: sent out of 3 interfaces
    (7, 2 << 30, 7, 0, False),           # format 2, an unknown number of interfaces
])
def test_sflow_interface_formats(expanded, input_, output, in_if, out_if, discarded) -> None:
    flow = _one([_flow_sample([_raw_header(FRAME)], input_=input_, output=output, expanded=expanded)])
    assert (flow["InIfIndex"], flow["OutIfIndex"]) == (in_if, out_if)
    assert (flow["ForwardingStatus"] >= 128) is discarded  # RFC 7270: 128-191 are drops


def test_expanded_sample_with_an_internal_input_in_its_own_format_word() -> None:
    """Expanded samples carry the format in a word of its own: format 0, value 0x3FFFFFFF."""
    body = struct.pack("!IIIIIIIIIII", 1, 0, 3, 100, 0, 0, 0, INTERNAL, 0, 12, 1) + _raw_header(FRAME)
    flow = _one([struct.pack("!II", 3, len(body)) + body])
    assert (flow["InIfIndex"], flow["OutIfIndex"]) == (0, 12)


@pytest.mark.parametrize("src_vlan, dst_vlan, expected", [
    (100, 200, (100, 200)),
    (4095, 1, (4095, 1)),
    (0xFFFFFFFF, 0xFFFFFFFF, (0, 0)),  # "unknown" per the sFlow extended-switch structure
    (4096, 70000, (0, 0)),
])
def test_extended_switch_vlans(src_vlan, dst_vlan, expected) -> None:
    switch = _record(1001, struct.pack("!IIII", src_vlan, 0, dst_vlan, 0))
    flow = _one([_flow_sample([_raw_header(FRAME), switch])])
    assert (flow["SrcVlan"], flow["DstVlan"]) == expected


def _gateway(router_as: int, src_as: int, path: list[int]) -> bytes:
    segments = struct.pack("!II", 2, len(path)) + struct.pack(f"!{len(path)}I", *path) if path else b""
    body = (struct.pack("!I4sIIII", 1, bytes([10, 0, 0, 253]), router_as, src_as, 64999, 1 if path else 0)
            + segments + struct.pack("!I", 0))  # no communities
    return _record(1003, body)


@pytest.mark.parametrize("src_as, path, expected", [
    (64501, [64502, 64510], (64501, 64510)),
    (0, [64502, 64510], (64500, 64510)),   # the flow starts at the router
    (64501, [], (64501, 64500)),           # ... ends at the router
    (0, [], (64500, 64500)),
])
def test_extended_gateway_uses_the_routers_as_at_either_end(src_as, path, expected) -> None:
    flow = _one([_flow_sample([_raw_header(FRAME), _gateway(64500, src_as, path)])])
    assert (flow["SrcAS"], flow["DstAS"]) == expected


def _ipfix_flow(fields: list[tuple[int, int]], values: bytes) -> dict:
    template = _ipfix_template(400, fields)
    data = _set(400, values)
    (flow,) = FlowDecoder().decode(_ipfix(template + data), "198.51.100.20", EXPORT).to_pylist()
    return flow


def test_ipfix_physical_interfaces_stand_in_for_missing_logical_ones() -> None:
    """IOS-XR templates carry ingress/egressPhysicalInterface (252/253, unsigned32) only."""
    fields = [(8, 4), (12, 4), (1, 8), (2, 8), (252, 4), (253, 4)]
    values = bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + struct.pack("!QQII", 1500, 1, 17, 42)
    flow = _ipfix_flow(fields, values)
    assert (flow["InIfIndex"], flow["OutIfIndex"], flow["Bytes"]) == (17, 42, 1500)


def test_logical_interfaces_win_over_physical_ones() -> None:
    fields = [(8, 4), (12, 4), (1, 8), (2, 8), (10, 4), (14, 4), (252, 4), (253, 4)]
    values = bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + struct.pack("!QQIIII", 1500, 1, 5, 6, 17, 42)
    flow = _ipfix_flow(fields, values)
    assert (flow["InIfIndex"], flow["OutIfIndex"]) == (5, 6)


@pytest.mark.parametrize("frame, expected", [
    (bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=42) / IP(src="10.1.0.1", dst="10.2.0.2") / UDP(sport=1, dport=2)), (42, 42)),
    # QinQ (802.1ad outer 100, customer 200): the inner tag, as the reference keeps it
    (bytes(Ether(type=0x88A8) / Dot1Q(vlan=100) / Dot1Q(vlan=200) / IP(src="10.1.0.1", dst="10.2.0.2")
           / UDP(sport=1, dport=2)), (200, 200)),
    (FRAME, (0, 0)),
])
def test_header_vlans_fill_both_directions_without_a_switch_record(frame, expected) -> None:
    flow = _one([_flow_sample([_raw_header(frame)])])
    assert (flow["SrcVlan"], flow["DstVlan"]) == expected


def test_a_switch_record_wins_over_the_header_vlan() -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=42) / IP(src="10.1.0.1", dst="10.2.0.2") / UDP(sport=1, dport=2))
    switch = _record(1001, struct.pack("!IIII", 7, 0, 8, 0))
    flow = _one([_flow_sample([_raw_header(frame), switch])])
    assert (flow["SrcVlan"], flow["DstVlan"]) == (7, 8)
