"""sFlow v5 records built with scapy packets inside hand-packed XDR sample structures."""

from __future__ import annotations

import ipaddress
import struct

from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from flows.decode import FlowDecoder, metrics


def _record(fmt: int, body: bytes) -> bytes:
    return struct.pack("!II", fmt, len(body)) + body


def _raw_header(frame: bytes, stripped: int = 4) -> bytes:
    padded = frame + bytes(-len(frame) % 4)
    return _record(1, struct.pack("!IIII", 1, len(frame) + stripped, stripped, len(frame)) + padded)


def _datagram(samples: list[bytes], agent: str = "192.0.2.50") -> bytes:
    head = struct.pack("!II", 5, 1) + ipaddress.IPv4Address(agent).packed + struct.pack("!IIII", 0, 1, 1000, len(samples))
    return head + b"".join(samples)


def _flow_sample(records: list[bytes], rate=512, input_=3, output=4, expanded=False) -> bytes:
    if expanded:
        body = struct.pack("!IIIIIIIIIII", 1, 0, 3, rate, 0, 0, 0, input_, output >> 30, output & 0x3FFFFFFF, len(records))
        fmt = 3
    else:
        body = struct.pack("!IIIIIIII", 1, 3, rate, 0, 0, input_, output, len(records))
        fmt = 1
    body += b"".join(records)
    return struct.pack("!II", fmt, len(body)) + body


def test_flow_samples_with_raw_headers_and_extended_records():
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0x28, hlim=60) / TCP(sport=40000, dport=443, flags="SA") / Raw(b"z" * 100)
    frame6 = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / Dot1Q(vlan=42) / MPLS(label=16, s=0)
                   / MPLS(label=17, s=1) / ip6)
    frame4 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2", ttl=9) / ICMP(type=3, code=1) / Raw(b"q" * 30))
    switch = _record(1001, struct.pack("!IIII", 7, 0, 8, 0))
    router = _record(1002, struct.pack("!I4sII", 1, bytes([10, 0, 0, 254]), 24, 16))
    gateway = _record(1003, struct.pack("!I4sIIII", 1, bytes([10, 0, 0, 253]), 64500, 64501, 64502, 1)
                      + struct.pack("!IIIII", 2, 3, 64502, 64510, 64520) + struct.pack("!II", 0, 100))
    counter_sample = struct.pack("!II", 2, 8) + bytes(8)
    samples = [
        _flow_sample([_raw_header(frame6), gateway], expanded=True),
        counter_sample,
        _flow_sample([_raw_header(frame4), switch, router], rate=100, output=(1 << 30) | 258),
    ]
    counters = metrics.SFLOW_COUNTER_SAMPLES._value.get()
    flows = FlowDecoder().decode(_datagram(samples), "198.51.100.1", 1_700_000_000.2).to_pylist()
    assert metrics.SFLOW_COUNTER_SAMPLES._value.get() == counters + 1
    six, four = flows
    assert ipaddress.IPv6Address(six["ExporterAddress"]).ipv4_mapped == ipaddress.IPv4Address("192.0.2.50")
    assert ipaddress.IPv6Address(six["SrcAddr"]) == ipaddress.IPv6Address("2001:db8::1")
    assert (six["EType"], six["Proto"], six["SrcPort"], six["DstPort"], six["TCPFlags"]) == (0x86DD, 6, 40000, 443, 0x12)
    assert six["Bytes"] == len(ip6) and six["Packets"] == 1 and six["SamplingRate"] == 512
    assert (six["SrcVlan"], six["MPLSLabels"], six["IPTos"], six["IPTTL"]) == (42, [16, 17], 0x28, 60)
    assert (six["SrcAS"], six["DstAS"], six["DstASPath"]) == (64501, 64520, [64502, 64510, 64520])
    assert (six["SrcMAC"], six["DstMAC"]) == (0x02000000000A, 0x02000000000B)
    assert (six["InIfIndex"], six["OutIfIndex"], six["ForwardingStatus"]) == (3, 4, 0)
    assert (four["EType"], four["Proto"], four["ICMPv4Type"], four["ICMPv4Code"], four["IPTTL"]) == (0x800, 1, 3, 1, 9)
    assert four["Bytes"] == len(frame4) - 14 and four["SamplingRate"] == 100
    assert (four["SrcVlan"], four["DstVlan"], four["SrcNetMask"], four["DstNetMask"]) == (7, 8, 24, 16)
    assert ipaddress.IPv6Address(four["NextHop"]).ipv4_mapped == ipaddress.IPv4Address("10.0.0.254")
    assert (four["OutIfIndex"], four["ForwardingStatus"]) == (0, 129)  # discarded by an ACL (reason 258): RFC 7270 ACL deny


def test_sampled_ipv4_record_without_header():
    record = _record(3, struct.pack("!II4s4sIIII", 1400, 17, bytes([10, 1, 1, 1]), bytes([10, 2, 2, 2]), 53, 5353, 0, 0))
    (flow,) = FlowDecoder().decode(_datagram([_flow_sample([record])]), "x", 0.0).to_pylist()
    assert (flow["Bytes"], flow["Proto"], flow["SrcPort"], flow["DstPort"], flow["EType"]) == (1400, 17, 53, 5353, 0x800)
