"""Decoding NetFlow v5/v9 and IPFIX packets built with scapy's NetFlow layers (an encoder that
is not ours), plus hand-built sets for what scapy cannot express (withdrawal, variable-length
and enterprise fields, unpadded sets, biflows)."""

from __future__ import annotations

import ipaddress
import pickle
import struct

import pytest
from scapy.layers.netflow import (
    GetNetflowRecordV9,
    NetflowDataflowsetV9,
    NetflowFlowsetV9,
    NetflowHeader,
    NetflowHeaderV5,
    NetflowHeaderV9,
    NetflowHeaderV10,
    NetflowRecordV5,
    NetflowTemplateFieldV9,
    NetflowTemplateV9,
)

from flows.decode import ExporterState, FlowDecoder, decode_many, metrics

EXPORT = 1_700_000_000


def ip(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


def rows(batch) -> list[dict]:
    return batch.to_pylist()


def ms(value) -> int:
    return int(value.replace(tzinfo=__import__("datetime").timezone.utc).timestamp() * 1000)


def test_netflow_v5_all_fields():
    records = [NetflowRecordV5(src="10.0.0.1", dst="192.0.2.9", nexthop="10.0.0.254", input=3, output=7,
                               dpkts=12, dOctets=3400, first=95_000, last=99_000, srcport=1234, dstport=443,
                               tcpFlags=0x1B, prot=6, tos=0x20, src_as=64500, dst_as=64501, src_mask=24,
                               dst_mask=16),
               NetflowRecordV5(src="10.0.0.2", dst="192.0.2.10", prot=1, dstport=0x0301, dpkts=1, dOctets=84,
                               first=99_500, last=99_500)]
    packet = NetflowHeader(version=5) / NetflowHeaderV5(count=2, sysUptime=100_000, unixSecs=EXPORT,
                                                        unixNanoSeconds=250_000_000, samplingInterval=0x4000 | 100)
    payload = bytes(packet / records[0] / records[1])
    first, icmp = rows(FlowDecoder().decode(payload, "198.51.100.1", EXPORT + 0.7))
    assert (ip(first["SrcAddr"]), ip(first["DstAddr"]), ip(first["NextHop"])) == ("10.0.0.1", "192.0.2.9", "10.0.0.254")
    assert ip(first["ExporterAddress"]) == "198.51.100.1" and first["TimeReceived"] == EXPORT
    assert (first["InIfIndex"], first["OutIfIndex"], first["Packets"], first["Bytes"]) == (3, 7, 12, 3400)
    assert (first["SrcPort"], first["DstPort"], first["TCPFlags"], first["Proto"], first["IPTos"]) == (1234, 443, 0x1B, 6, 0x20)
    assert (first["SrcAS"], first["DstAS"], first["SrcNetMask"], first["DstNetMask"]) == (64500, 64501, 24, 16)
    assert first["SamplingRate"] == 100 and first["EType"] == 0x800
    export_ms = EXPORT * 1000 + 250
    assert ms(first["TimeFlowStart"]) == export_ms - 5_000 and ms(first["TimeFlowEnd"]) == export_ms - 1_000
    assert (icmp["ICMPv4Type"], icmp["ICMPv4Code"]) == (3, 1)


def _v9_template(template_id=256, fields=None):
    fields = fields or [("IPV4_SRC_ADDR", 4), ("IPV4_DST_ADDR", 4), ("IN_BYTES", 4), ("IN_PKTS", 4),
                        ("PROTOCOL", 1), ("L4_SRC_PORT", 2), ("L4_DST_PORT", 2), ("FIRST_SWITCHED", 4),
                        ("LAST_SWITCHED", 4), ("INPUT_SNMP", 2), ("OUTPUT_SNMP", 2), ("SRC_VLAN", 2),
                        ("DIRECTION", 1), ("FORWARDING_STATUS", 1), ("ICMP_TYPE", 2)]
    return NetflowFlowsetV9(flowSetID=0, templates=[NetflowTemplateV9(templateID=template_id, template_fields=[
        NetflowTemplateFieldV9(fieldType=name, fieldLength=length) for name, length in fields])])


def _v9_data(template, template_id=256, **values):
    record = GetNetflowRecordV9(template, templateID=template_id)
    return NetflowDataflowsetV9(templateID=template_id, records=[record(**values)])


V9_VALUES = dict(IPV4_SRC_ADDR="10.1.1.1", IPV4_DST_ADDR="10.2.2.2", IN_BYTES=1500, IN_PKTS=3, PROTOCOL=17,
                 L4_SRC_PORT=5353, L4_DST_PORT=53, FIRST_SWITCHED=3_000, LAST_SWITCHED=4_000, INPUT_SNMP=10,
                 OUTPUT_SNMP=20, SRC_VLAN=100, DIRECTION=1, FORWARDING_STATUS=0x42, ICMP_TYPE=0)


def _v9_packet(*sets, uptime=10_000, source_id=1):
    packet = NetflowHeader(version=9) / NetflowHeaderV9(count=len(sets), sysUptime=uptime, unixSecs=EXPORT,
                                                        SourceID=source_id)
    for s in sets:
        packet = packet / s
    return bytes(packet)


def test_netflow_v9_template_then_data():
    template = _v9_template()
    payload = _v9_packet(template, _v9_data(template, **V9_VALUES))
    (flow,) = rows(FlowDecoder().decode(payload, "198.51.100.2", EXPORT))
    assert (ip(flow["SrcAddr"]), ip(flow["DstAddr"]), flow["Bytes"], flow["Packets"]) == ("10.1.1.1", "10.2.2.2", 1500, 3)
    assert (flow["InIfIndex"], flow["OutIfIndex"], flow["SrcVlan"], flow["FlowDirection"]) == (10, 20, 100, 2)
    assert flow["EType"] == 0x800  # (scapy encodes FORWARDING_STATUS as 0 whatever is given)
    assert ms(flow["TimeFlowStart"]) == EXPORT * 1000 - 7_000 and ms(flow["TimeFlowEnd"]) == EXPORT * 1000 - 6_000


def test_netflow_v9_data_before_template_is_counted_and_held():
    template = _v9_template()
    decoder = FlowDecoder()
    missing = metrics.ERRORS_BY_REASON["missing_template"]._value.get()
    assert decoder.decode(_v9_packet(_v9_data(template, **V9_VALUES)), "198.51.100.3", EXPORT).num_rows == 0
    assert metrics.ERRORS_BY_REASON["missing_template"]._value.get() == missing + 1
    batch = decoder.decode(_v9_packet(template), "198.51.100.3", EXPORT + 1)
    assert batch.num_rows == 1  # the held data set, decoded once its template came


def test_templates_are_per_source_id():
    a = _v9_template(fields=[("IN_BYTES", 4), ("IN_PKTS", 4)])
    b = _v9_template(fields=[("IN_PKTS", 4), ("IN_BYTES", 4)])
    decoder = FlowDecoder()
    decoder.decode(_v9_packet(a, source_id=1), "198.51.100.4", EXPORT)
    decoder.decode(_v9_packet(b, source_id=2), "198.51.100.4", EXPORT)
    raw = struct.pack("!HHII", 256, 12, 100, 5)
    got = [rows(decoder.decode(_v9_packet_raw(raw, sid), "198.51.100.4", EXPORT))[0] for sid in (1, 2)]
    assert [(g["Bytes"], g["Packets"]) for g in got] == [(100, 5), (5, 100)]


def _v9_packet_raw(sets: bytes, source_id=1, uptime=10_000) -> bytes:
    return struct.pack("!HHIIII", 9, 1, uptime, EXPORT, 0, source_id) + sets


def _ipfix(sets: bytes, domain=1, export=EXPORT) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(sets), export, 0, domain) + sets


def _ipfix_template(template_id: int, fields: list[tuple], set_id=2) -> bytes:
    body = struct.pack("!HH", template_id, len(fields))
    for field in fields:
        ie, length, *pen = field
        body += struct.pack("!HH", ie | (0x8000 if pen else 0), length) + (struct.pack("!I", pen[0]) if pen else b"")
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def _set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def test_ipfix_with_scapy_header_and_template():
    template = _v9_template(fields=[("IPV4_SRC_ADDR", 4), ("IPV4_DST_ADDR", 4), ("IN_BYTES", 8), ("IN_PKTS", 8)])
    template.flowSetID = 2
    data = _v9_data(template, IPV4_SRC_ADDR="10.3.3.3", IPV4_DST_ADDR="10.4.4.4", IN_BYTES=7, IN_PKTS=1)
    payload = bytes(NetflowHeader(version=10) / NetflowHeaderV10(ExportTime=EXPORT, ObservationDomainID=5) / template / data)
    # scapy 2.8 writes a message length 2 bytes short; a collector must trust the length field
    payload = payload[:2] + struct.pack("!H", len(payload)) + payload[4:]
    (flow,) = rows(FlowDecoder().decode(payload, "198.51.100.5", EXPORT))
    assert (ip(flow["SrcAddr"]), flow["Bytes"], flow["Packets"]) == ("10.3.3.3", 7, 1)


def test_ipfix_ipv6_variable_length_enterprise_unpadded_and_ms_times():
    fields = [(27, 16), (28, 16), (1, 4), (2, 4), (4, 1), (82, 65535), (100, 3, 9), (152, 8), (153, 8),
              (139, 2), (62, 16), (70, 3), (71, 3)]
    src, dst, hop = (ipaddress.IPv6Address(a).packed for a in ("2001:db8::1", "2001:db8::2", "2001:db8::fe"))
    record = (src + dst + struct.pack("!IIB", 900, 9, 58) + b"\x04eth0" + b"abc"
              + struct.pack("!QQH", 1_699_999_999_000, 1_700_000_000_500, 0x8000) + hop
              + (1000 << 4).to_bytes(3, "big") + ((2000 << 4) | 1).to_bytes(3, "big"))
    long_name = b"\xff\x01\x00" + b"n" * 256  # variable length announced with 3 bytes
    record2 = record.replace(b"\x04eth0", long_name)
    payload = _ipfix(_ipfix_template(300, fields) + _set(300, record + record2))  # unpadded set
    flows = rows(FlowDecoder().decode(payload, "2001:db8::99", EXPORT))
    assert len(flows) == 2
    flow = flows[0]
    assert (ip(flow["SrcAddr"]), ip(flow["DstAddr"]), ip(flow["NextHop"])) == ("2001:db8::1", "2001:db8::2", "2001:db8::fe")
    assert (flow["Bytes"], flow["Packets"], flow["Proto"], flow["EType"]) == (900, 9, 58, 0x86DD)
    assert (flow["ICMPv6Type"], flow["ICMPv6Code"]) == (128, 0)
    assert ms(flow["TimeFlowStart"]) == 1_699_999_999_000 and ms(flow["TimeFlowEnd"]) == 1_700_000_000_500
    assert flow["MPLSLabels"] == [1000, 2000]
    assert ip(flow["ExporterAddress"]) == "2001:db8::99"


def test_ipfix_template_withdrawal():
    decoder = FlowDecoder()
    template = _ipfix_template(400, [(1, 4), (2, 4)])
    record = _set(400, struct.pack("!II", 10, 1))
    assert decoder.decode(_ipfix(template + record), "198.51.100.6", EXPORT).num_rows == 1
    withdrawal = _set(2, struct.pack("!HH", 400, 0))
    assert decoder.decode(_ipfix(withdrawal + record), "198.51.100.6", EXPORT).num_rows == 0
    # the record sent after the withdrawal was held and comes out with the new template
    assert decoder.decode(_ipfix(template + record), "198.51.100.6", EXPORT).num_rows == 2
    withdraw_all = _set(2, struct.pack("!HH", 2, 0))
    assert decoder.decode(_ipfix(withdraw_all + record), "198.51.100.6", EXPORT).num_rows == 0


def test_ipfix_sampling_options_and_system_init_time():
    options = struct.pack("!HHH", 500, 4, 1) + struct.pack("!HHHHHHHH", 302, 4, 305, 4, 306, 4, 160, 8)
    options_set = _set(3, options)
    template = _ipfix_template(501, [(1, 4), (2, 4), (302, 4), (22, 4), (21, 4)])
    option_data = _set(500, struct.pack("!IIIQ", 7, 1, 999, 1_600_000_000_000))
    data = _set(501, struct.pack("!IIIII", 100, 2, 7, 1000, 3000) + struct.pack("!IIIII", 50, 1, 8, 0, 0))
    flows = rows(FlowDecoder().decode(_ipfix(options_set + template + option_data + data), "198.51.100.7", EXPORT))
    assert [f["SamplingRate"] for f in flows] == [1000, 0]  # sampler 8 is unknown
    assert ms(flows[0]["TimeFlowStart"]) == 1_600_000_001_000 and ms(flows[0]["TimeFlowEnd"]) == 1_600_000_003_000


def test_impossible_options_values_do_not_break_later_batches():
    """A boot time or rate that no int64/UInt64 column can hold is not kept as state: the
    exporter's later data still decodes (with the previous boot time)."""
    options = _set(3, struct.pack("!HHH", 500, 2, 1) + struct.pack("!HHHH", 305, 4, 160, 8))
    template = _ipfix_template(501, [(1, 4), (22, 4)])
    decoder = FlowDecoder()
    sane = _set(500, struct.pack("!IQ", 0, 1_600_000_000_000))
    decoder.decode(_ipfix(options + template + sane), "198.51.100.9", EXPORT)
    hostile = _set(500, struct.pack("!IQ", 1, (1 << 64) - 1))  # space 0 / interval 1; boot time 2^64-1
    decoder.decode(_ipfix(options + hostile), "198.51.100.9", EXPORT)
    (flow,) = rows(decoder.decode(_ipfix(_set(501, struct.pack("!II", 100, 5000))), "198.51.100.9", EXPORT))
    assert flow["Bytes"] == 100 and ms(flow["TimeFlowStart"]) == 1_600_000_005_000


def test_netflow_v9_sampling_options():
    scope = struct.pack("!HH", 1, 4)  # scope: system
    options = struct.pack("!HHH", 260, 4, 12) + scope + struct.pack("!HHHHHH", 48, 1, 34, 4, 35, 1)
    options_set = _set(1, options + b"\x00\x00")  # padded to 4 bytes
    option_data = _set(260, struct.pack("!IBIB", 0, 3, 512, 2) + b"\x00\x00")
    template = _set(0, struct.pack("!HH", 261, 3) + struct.pack("!HHHHHH", 1, 4, 2, 4, 48, 1))
    data = _set(261, struct.pack("!IIB", 64, 1, 3) + b"\x00\x00\x00")
    flows = rows(FlowDecoder().decode(_v9_packet_raw(options_set + option_data + template + data), "198.51.100.8", EXPORT))
    assert [(f["Bytes"], f["SamplingRate"]) for f in flows] == [(64, 512)]


def test_biflow_reverse_counters_become_reverse_flow():
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (1, 4, 29305), (2, 4, 29305), (10, 2), (14, 2)]
    record = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HHBIIIIHH", 40000, 443, 6, 500, 5, 9000, 8, 1, 2)
    flows = rows(FlowDecoder().decode(_ipfix(_ipfix_template(600, fields) + _set(600, record)), "198.51.100.9", EXPORT))
    forward, reverse = flows
    assert (ip(forward["SrcAddr"]), forward["SrcPort"], forward["Bytes"], forward["InIfIndex"]) == ("10.0.0.1", 40000, 500, 1)
    assert (ip(reverse["SrcAddr"]), ip(reverse["DstAddr"]), reverse["SrcPort"], reverse["DstPort"]) == ("10.0.0.2", "10.0.0.1", 443, 40000)
    assert (reverse["Bytes"], reverse["Packets"], reverse["InIfIndex"], reverse["OutIfIndex"]) == (9000, 8, 2, 1)


def test_times_far_from_export_are_kept():
    template = _set(0, struct.pack("!HH", 270, 3) + struct.pack("!HHHHHH", 1, 4, 22, 4, 21, 4))
    data = _set(270, struct.pack("!III", 1, 5_000_000, 5_000_000))  # "started" ~1.4 h in the future
    (flow,) = rows(FlowDecoder().decode(_v9_packet_raw(template + data, uptime=1000), "198.51.100.10", EXPORT))
    assert ms(flow["TimeFlowStart"]) == EXPORT * 1000 + 4_999_000


def test_state_is_bounded_and_picklable():
    state = ExporterState("198.51.100.11", max_templates=16)
    evictions = metrics.TEMPLATE_EVICTIONS._value.get()
    for first in range(0, 100, 20):  # (at most MAX_NEW_TEMPLATES_PER_DATAGRAM per datagram)
        flood = b"".join(_set(0, struct.pack("!HHHH", 256 + i, 1, 1, 4)) for i in range(first, first + 20))
        decode_many(state, [(_v9_packet_raw(flood), "198.51.100.11", EXPORT)])
    assert len(state.templates) == 16
    assert metrics.TEMPLATE_EVICTIONS._value.get() == evictions + 84
    restored = pickle.loads(pickle.dumps(state))
    batch = decode_many(restored, [(_v9_packet_raw(_set(355, struct.pack("!I", 77))), "x", EXPORT)])
    assert batch.column("Bytes").to_pylist() == [77]


def test_batches_pickle_to_their_own_size():
    """The outlet keeps pending batches in its snapshots: a batch must carry its rows only, not
    buffers shared with other batches (e.g. a slice of a longer cached array)."""
    template = _v9_template()
    batch = FlowDecoder().decode(_v9_packet(template, _v9_data(template, **V9_VALUES)), "198.51.100.13", EXPORT)
    assert batch.num_rows == 1
    assert len(pickle.dumps(batch)) < 20_000  # ~70 columns of one row, and their schema


def test_exporters_are_bounded():
    decoder = FlowDecoder(max_exporters=3)
    for i in range(10):
        decoder.decode(_v9_packet_raw(b""), f"192.0.2.{i}", EXPORT)
    assert list(decoder.states) == ["192.0.2.7", "192.0.2.8", "192.0.2.9"]


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_decode_many_equals_decode_one_by_one(chunk):
    template = _v9_template()
    datagrams = [(_v9_packet(template, _v9_data(template, **{**V9_VALUES, "IN_BYTES": i})), "198.51.100.12", EXPORT)
                 for i in range(7)]
    decoder = FlowDecoder()
    got = []
    for i in range(0, len(datagrams), chunk):
        got += decoder.decode_many(datagrams[i:i + chunk]).column("Bytes").to_pylist()
    assert got == list(range(7))
