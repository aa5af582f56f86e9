"""`waxflow decode FILE.pcap`: decodes a capture of exporter datagrams and prints the flows."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests import flowgen
from waxflow.decode_cli import decode


@pytest.fixture(scope="module")
def export_capture(tmp_path_factory):
    """A pcap of the datagrams softflowd sent as IPFIX and as NetFlow v9 (two exporters), as a collector sees them."""
    if not (flowgen.have("softflowd") and flowgen.have("pmacctd")):
        pytest.skip(reason="softflowd or pmacctd binary missing (Debian packages softflowd, pmacct)")
    tmp = tmp_path_factory.mktemp("cli")
    totals = flowgen.make_pcap(tmp / "traffic.pcap", flows=30)
    flowgen.write_capture(tmp / "exports.pcap", {
        "192.0.2.1": flowgen.run_softflowd(tmp / "traffic.pcap", 10),
        "192.0.2.2": flowgen.run_softflowd(tmp / "traffic.pcap", 9),
    })
    return tmp / "exports.pcap", totals


def test_jsonl_has_every_flow_per_exporter(export_capture):
    path, totals = export_capture
    result = CliRunner().invoke(decode, [str(path), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["ExporterAddress"] for r in rows} == {"192.0.2.1", "192.0.2.2"}
    for exporter in ("192.0.2.1", "192.0.2.2"):
        assert flowgen.jsonl_totals(rows, exporter) == totals


@pytest.mark.parametrize("fmt", ["csv", "table"])
def test_csv_and_table(export_capture, fmt):
    path, totals = export_capture
    result = CliRunner().invoke(decode, [str(path), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert "SrcAddr" in result.stdout and "192.0.2.1" in result.stdout
    if fmt == "csv":
        assert len(result.stdout.strip().splitlines()) == 1 + 2 * len(totals)


def test_fields_choose_and_order_the_columns(export_capture):
    path, totals = export_capture
    result = CliRunner().invoke(decode, [str(path), "--format", "csv", "--fields", "DstPort,SrcAddr,Bytes"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "DstPort,SrcAddr,Bytes" and len(lines) == 1 + 2 * len(totals)


def test_an_unknown_field_is_refused_naming_it(export_capture):
    path, _ = export_capture
    result = CliRunner().invoke(decode, [str(path), "--fields", "SrcAddr,SrcPrt"])
    assert result.exit_code == 2 and "SrcPrt" in result.output


def test_summary_line_counts_datagrams_flows_and_errors(tmp_path):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    from tests.test_decode_sflow import _datagram, _flow_sample, _raw_header

    inner = IP(src="198.51.100.1", dst="198.51.100.2") / TCP(sport=443, dport=1000)
    mac = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    tunneled = Ether(**mac) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(dport=4789) / VXLAN(vni=5) / Ether(**mac) / inner
    plain = Ether(**mac) / inner
    sflow = [_datagram([_flow_sample([_raw_header(bytes(frame))])]) for frame in (tunneled, plain)]
    path = tmp_path / "sflow.pcap"
    flowgen.write_capture(path, {"192.0.2.9": [(d, "", 1_700_000_000.0) for d in sflow + [b"\x00\x07junk"]]})
    result = CliRunner().invoke(decode, [str(path), "--format", "jsonl", "--decapsulation", "vxlan"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["SrcAddr"], r["DstPort"]) for r in rows] == [("198.51.100.1", 1000)]
    assert result.stderr.strip().endswith("3 datagrams, 1 flows; undecodable: not_encapsulated 1, unknown_version 1")


def _v5_datagram(source_port: int) -> bytes:
    from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

    header = NetflowHeader(version=5) / NetflowHeaderV5(count=1, sysUptime=100_000, unixSecs=1_700_000_000)
    return bytes(header / NetflowRecordV5(src="10.0.0.1", dst="192.0.2.9", srcport=source_port, dstport=443,
                                          prot=6, dpkts=3, dOctets=300, first=99_000, last=99_500))


@pytest.mark.parametrize("container", ["pcap", "pcapng"])
def test_reads_the_link_types_collectors_capture(tmp_path, container):
    """Ethernet with a VLAN tag, Linux cooked capture (tcpdump -i any), raw IPv6: each exporter
    datagram is decoded with its source address and capture time; a TCP segment and a frame cut
    short are not datagrams."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinux, Dot1Q, Ether
    from scapy.utils import PcapNgWriter, PcapWriter

    mac = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    captures = {
        "ethernet": [Ether(**mac) / Dot1Q(vlan=12) / IP(src="192.0.2.1", dst="192.0.2.100") / UDP(dport=2055)
                     / _v5_datagram(1001),
                     Ether(**mac) / IP(src="192.0.2.1", dst="192.0.2.100") / TCP(dport=2055) / _v5_datagram(9),
                     Ether(**mac) / IP(src="192.0.2.1", dst="192.0.2.100", len=200, proto=17)],
        "cooked": [CookedLinux(pkttype=0, proto=0x86DD) / IPv6(src="2001:db8::7", dst="2001:db8::100")
                   / UDP(dport=2055) / _v5_datagram(1002)],
        "raw": [IPv6(src="2001:db8::8", dst="2001:db8::100") / UDP(dport=2055) / _v5_datagram(1003)],
    }
    expected = {"ethernet": [("192.0.2.1", 1001)], "cooked": [("2001:db8::7", 1002)],
                "raw": [("2001:db8::8", 1003)]}
    writer = PcapNgWriter if container == "pcapng" else PcapWriter
    for name, frames in captures.items():
        path = tmp_path / f"{name}.{container}"
        for frame in frames:
            frame.time = 1_700_000_000.5
        with writer(str(path), **({"linktype": 101} if name == "raw" and container == "pcap" else {})) as out:
            for frame in frames:
                out.write(frame)
        result = CliRunner().invoke(decode, [str(path), "--format", "jsonl"])
        assert result.exit_code == 0, (name, result.output)
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert [(r["ExporterAddress"], r["SrcPort"]) for r in rows] == expected[name], name
        assert {r["TimeReceived"] for r in rows} == {"2023-11-14T22:13:20+00:00"}, name


def test_a_file_that_is_no_capture_is_refused(tmp_path):
    path = tmp_path / "notes.pcap"
    path.write_text("not a capture")
    result = CliRunner().invoke(decode, [str(path)])
    assert result.exit_code == 1 and "not a pcap or pcapng capture" in result.output
