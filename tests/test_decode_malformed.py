"""Malformed and hostile input: nothing escapes decode, errors are counted by reason, state
stays bounded. Uses real exporter datagrams (softflowd, pmacct sfprobe) as the starting point."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest

from flows import schema
from flows.decode import FlowDecoder, metrics
from flows.decode.state import MAX_HELD_SETS
from tests import flowgen

EXPORTER = "127.0.0.1"


@pytest.fixture(scope="module")
def real_datagrams(tmp_path_factory):
    """A few datagrams of each kind from the real exporters (templates included)."""
    if not (flowgen.have("softflowd") and flowgen.have("pmacctd")):
        pytest.skip(reason="softflowd or pmacctd binary missing (Debian packages softflowd, pmacct)")
    pcap = tmp_path_factory.mktemp("malformed") / "traffic.pcap"
    flowgen.make_pcap(pcap, flows=40, filler=40)
    out = {f"softflowd-v{v}": flowgen.run_softflowd(pcap, v)[:3] for v in (5, 9, 10)}
    out["pmacct-sflow"] = flowgen.run_pmacct(pcap, "sfprobe")[:3]
    out["pmacct-ipfix"] = flowgen.run_pmacct(pcap, "nfprobe", 10)[:3]
    return out


def _errors() -> float:
    return sum(c._value.get() for c in metrics.ERRORS_BY_REASON.values())


def _warm(datagrams) -> FlowDecoder:
    decoder = FlowDecoder()
    decoder.decode_many(datagrams)
    return decoder


def test_truncation_at_every_offset(real_datagrams):
    before = _errors()
    for _kind, datagrams in real_datagrams.items():
        decoder = _warm(datagrams)
        for payload, _, received in datagrams:
            for cut in range(len(payload)):
                batch = decoder.decode(payload[:cut], EXPORTER, received)
                assert batch.schema == schema.ARROW_SCHEMA
    assert _errors() > before


def test_many_cut_datagrams_in_one_call_decode_as_one_by_one(real_datagrams):
    """A call walks many datagrams in lock step (numpy) and the last few one at a time
    (Python): both walks must keep and count the same things."""
    rng = random.Random(3)
    for kind, datagrams in real_datagrams.items():
        cut = [(payload[:rng.randrange(len(payload) + 1)], EXPORTER, received)
               for _ in range(40) for payload, _, received in datagrams]
        malformed = metrics.ERRORS_BY_REASON["malformed"]._value.get()
        before = _errors()
        together = _warm(datagrams).decode_many(cut)
        counted_together = _errors() - before
        one_by_one = _warm(datagrams)
        parts = [one_by_one.decode_many([d]) for d in cut]
        assert _errors() - before - counted_together == counted_together > 0, kind
        separately = pa.Table.from_batches(parts, schema=schema.ARROW_SCHEMA)
        # One call groups rows by template, so compare the rows, not their order.
        assert sorted(map(repr, together.to_pylist())) == sorted(map(repr, separately.to_pylist())), kind
        assert metrics.ERRORS_BY_REASON["malformed"]._value.get() == malformed, kind


def test_truncated_datagram_keeps_its_whole_records(real_datagrams):
    payload, _, received = real_datagrams["softflowd-v5"][0]
    count = struct.unpack_from("!H", payload, 2)[0]
    batch = FlowDecoder().decode(payload[:24 + 48 * 2 + 10], EXPORTER, received)
    assert count > 2 and batch.num_rows == 2


@pytest.mark.parametrize("payload,reason", [
    (b"\x00\x07" + bytes(40), "unknown_version"),
    (b"\x00\x00\x00\x04" + bytes(40), "unknown_version"),
    (b"\x00", "truncated"),
    (struct.pack("!HHIIII", 9, 1, 0, 0, 0, 0) + struct.pack("!HH", 300, 0), "bad_length"),  # zero-length set
    (struct.pack("!HHIII", 10, 8, 0, 0, 0), "bad_length"),  # message length below the header
    (struct.pack("!HHIII", 10, 400, 0, 0, 0) + struct.pack("!HH", 300, 8) + bytes(4), "truncated"),
    (struct.pack("!HHIIII", 9, 1, 0, 0, 0, 0) + struct.pack("!HHHHHH", 0, 12, 300, 1, 1, 0), "bad_template"),
    (struct.pack("!HHIIII", 9, 1, 0, 0, 0, 0) + struct.pack("!HHI", 999, 8, 1), "missing_template"),
    (struct.pack("!IIIIIII", 5, 7, 0, 0, 0, 0, 1), "bad_length"),  # sFlow with a bad address type
    (struct.pack("!IIIIIIII", 5, 1, 0, 0, 0, 0, 3, 1) + struct.pack("!II", 1, 400), "truncated"),
])
def test_bad_input_is_counted_by_reason(payload, reason):
    counter = metrics.ERRORS_BY_REASON[reason]
    before = counter._value.get()
    batch = FlowDecoder().decode(payload, EXPORTER, 0.0)
    assert batch.num_rows == 0
    assert counter._value.get() > before


def test_rest_of_datagram_decoded_after_a_bad_set():
    template = struct.pack("!HH", 0, 12) + struct.pack("!HHHH", 300, 1, 1, 4)
    bogus = struct.pack("!HH", 7, 8) + bytes(4)  # reserved set id
    data = struct.pack("!HHI", 300, 8, 1234)
    payload = struct.pack("!HHIIII", 9, 3, 0, 0, 0, 0) + template + bogus + data
    assert FlowDecoder().decode(payload, EXPORTER, 0.0).column("Bytes").to_pylist() == [1234]


def test_template_flood_and_exporter_flood_stay_bounded():
    decoder = FlowDecoder(max_exporters=8, max_templates=32)
    rng = random.Random(1)
    for i in range(200):
        sets = b"".join(struct.pack("!HHHHHH", 0, 12, rng.randrange(256, 65536), 1, 1, rng.randrange(1, 9))
                        for _ in range(50))
        data = b"".join(struct.pack("!HH", rng.randrange(256, 65536), 8) + bytes(4) for _ in range(50))
        decoder.decode(struct.pack("!HHIIII", 9, 100, 0, 0, 0, i) + sets + data, f"10.9.{i % 20}.1", float(i))
    assert len(decoder.states) <= 8
    for state in decoder.states.values():
        assert len(state.templates) <= 32
        assert len(state.held) <= MAX_HELD_SETS
        assert len(state.seen_template_sets) <= 4 * 32


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_datagrams_never_raise(real_datagrams, data):
    kind = data.draw(st.sampled_from(sorted(real_datagrams)))
    datagrams = real_datagrams[kind]
    payload = bytearray(data.draw(st.sampled_from(datagrams))[0])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(payload) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete", "length"]))
        if action == "set":
            payload[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            payload[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and len(payload) > 1:
            del payload[position:position + data.draw(st.integers(1, 8))]
        elif action == "length" and position + 2 <= len(payload):
            payload[position:position + 2] = struct.pack("!H", data.draw(st.sampled_from([0, 1, 3, 4, 0xFFFF])))
    decoder = _warm(datagrams[:1])
    batch = decoder.decode_many([(bytes(payload), EXPORTER, 1.0)] + datagrams[1:2])
    assert batch.schema == schema.ARROW_SCHEMA


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
def test_metric_names_pass_promtool():
    FlowDecoder().decode(b"\x00\x09", EXPORTER, 0.0)
    text = b"\n".join(line for line in generate_latest(REGISTRY).splitlines()
                      if line.startswith((b"waxflow_decode_", b"# HELP waxflow_decode_", b"# TYPE waxflow_decode_")))
    result = subprocess.run(["promtool", "check", "metrics"], input=text + b"\n", capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"waxflow_decode_errors_total" in text
