"""Decoding what real exporters send: softflowd and pmacct (nfprobe, sfprobe) over a generated
pcap. Per-5-tuple packet and byte totals must equal the pcap's (exactly when unsampled)."""

from __future__ import annotations

import pickle

import pytest

from flows.decode import ExporterState, FlowDecoder, decode_many
from tests import flowgen

needs_softflowd = pytest.mark.skipif(not flowgen.have("softflowd"),
                                     reason="softflowd binary missing (Debian package softflowd)")
needs_pmacctd = pytest.mark.skipif(not flowgen.have("pmacctd"),
                                   reason="pmacctd binary missing (Debian package pmacct)")


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("pcap") / "traffic.pcap"
    totals = flowgen.make_pcap(path, flows=150, filler=40)
    return path, totals


def _expected(totals, version):
    if version == 5:  # NetFlow v5 carries IPv4 only
        return {k: v for k, v in totals.items() if ":" not in k[0]}
    return totals


def _assert_totals(batch, expected, multiply_sampling=False):
    got = flowgen.decoded_totals(batch, multiply_sampling=multiply_sampling)
    missing = {k: expected[k] for k in expected if k not in got}
    wrong = {k: (got[k], expected.get(k)) for k in got if got[k] != expected.get(k)}
    assert not missing and not wrong, f"missing={list(missing.items())[:5]} wrong={list(wrong.items())[:5]}"


@pytest.fixture(scope="module")
def softflowd_exports(capture):
    if not flowgen.have("softflowd"):
        pytest.skip(reason="softflowd binary missing (Debian package softflowd)")
    return {v: flowgen.run_softflowd(capture[0], v) for v in (5, 9, 10)}


@needs_softflowd
@pytest.mark.parametrize("version", [5, 9, 10])
def test_softflowd_totals_match_pcap(capture, softflowd_exports, version):
    datagrams = softflowd_exports[version]
    assert datagrams
    batch = FlowDecoder().decode_many(datagrams)
    _assert_totals(batch, _expected(capture[1], version))
    columns = batch.to_pydict()
    assert set(columns["ExporterAddress"]) == {bytes(10) + b"\xff\xff\x7f\x00\x00\x01"}
    # softflowd -a uses pcap time for flows: they lie around the pcap's start time
    starts = [t.timestamp() for t in columns["TimeFlowStart"]]
    assert min(starts) >= flowgen.BASE_TIME - 1 and max(starts) < flowgen.BASE_TIME + 60
    assert all(s <= e.timestamp() for s, e in zip(starts, columns["TimeFlowEnd"]))


@needs_softflowd
def test_softflowd_icmp_type_and_etype(softflowd_exports):
    columns = FlowDecoder().decode_many(softflowd_exports[10]).to_pydict()
    rows = list(zip(columns["Proto"], columns["EType"], columns["ICMPv4Type"], columns["ICMPv6Type"]))
    assert {(1, 0x800, 8, 0)} == {r for r in rows if r[0] == 1}
    assert {(58, 0x86DD, 0, 128)} == {r for r in rows if r[0] == 58}
    assert {r[1] for r in rows if r[0] == 6} == {0x800, 0x86DD}


@needs_softflowd
def test_softflowd_biflow_reverse_becomes_its_own_flow(tmp_path):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    packets = []
    for i in range(6):
        forward = i % 3 != 2
        ip = IP(src="10.0.0.1", dst="10.0.0.2") if forward else IP(src="10.0.0.2", dst="10.0.0.1")
        tcp = TCP(sport=1234, dport=80, flags="A") if forward else TCP(sport=80, dport=1234, flags="A")
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / tcp / (b"y" * (10 * i))
        p.time = flowgen.BASE_TIME + i * 0.01
        packets.append(p)
    wrpcap(str(tmp_path / "bi.pcap"), packets)
    datagrams = flowgen.run_softflowd(tmp_path / "bi.pcap", 10, bidirectional=True)
    got = flowgen.decoded_totals(FlowDecoder().decode_many(datagrams))
    expected: dict = {}
    for p in packets:
        key = flowgen.flow_key(p[IP].src, p[IP].dst, 6, p[TCP].sport, p[TCP].dport)
        entry = expected.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += len(bytes(p[IP]))
    assert got == expected


@needs_softflowd
def test_softflowd_sampled_keeps_sampling_rate(capture):
    datagrams = flowgen.run_softflowd(capture[0], 10, sampling=10)
    batch = FlowDecoder().decode_many(datagrams)
    assert batch.num_rows > 0
    assert set(batch.column("SamplingRate").to_pylist()) == {10}
    total_packets = sum(v[0] for v in capture[1].values())
    assert sum(batch.column("Packets").to_pylist()) < total_packets  # 1 in 10 kept


@needs_pmacctd
@pytest.mark.parametrize("version", [5, 9, 10])
def test_pmacct_nfprobe_totals_match_pcap(capture, version):
    datagrams = flowgen.run_pmacct(capture[0], "nfprobe", version)
    assert datagrams, flowgen.run_pmacct.last_log
    _assert_totals(FlowDecoder().decode_many(datagrams), _expected(capture[1], version))


@needs_pmacctd
def test_pmacct_sfprobe_totals_match_pcap(capture):
    path, totals = capture
    datagrams = flowgen.run_pmacct(path, "sfprobe")
    assert datagrams, flowgen.run_pmacct.last_log
    batch = FlowDecoder().decode_many(datagrams)
    # sfprobe holds back its last partly filled datagram: only filler flows may be short
    got = flowgen.decoded_totals(batch)
    core = {k: v for k, v in totals.items() if not k[0].startswith("198.51.100.")}
    assert {k: got.get(k) for k in core} == core
    assert set(batch.column("SamplingRate").to_pylist()) == {1}
    agent = bytes(10) + b"\xff\xff\x7f\x00\x00\x01"
    assert set(batch.column("ExporterAddress").to_pylist()) == {agent}


@needs_softflowd
def test_per_exporter_state_pickles_between_calls(softflowd_exports, capture):
    """The outlet keeps one ExporterState per exporter as Bytewax state: decoding with a state
    that went through pickle between datagrams gives the same flows."""
    datagrams = softflowd_exports[9]
    state = ExporterState("127.0.0.1")
    batches = []
    for datagram in datagrams:
        batches.append(decode_many(state, [datagram]))
        state = pickle.loads(pickle.dumps(state))
    import pyarrow as pa
    table = pa.Table.from_batches(batches)
    got = flowgen.decoded_totals(table.combine_chunks().to_batches()[0])
    assert got == capture[1]
