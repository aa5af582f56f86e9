"""One bad record costs only itself (issue 15): an options record whose samplingProbability is
a denormal (1 / p overflows) or otherwise impossible sets no rate, and the other sets and other
exporters decoded in the same call keep every flow."""

from __future__ import annotations

import struct

import pytest

from flows.decode import FlowDecoder, metrics
from tests.test_decode_scapy import EXPORT, _ipfix, _ipfix_template, _set

# IPFIX options template 600: scope observationDomainId (149, 4), samplingProbability (311, 8)
OPTIONS = _set(3, struct.pack("!HHH", 600, 2, 1) + struct.pack("!HHHH", 149, 4, 311, 8))
FLOWS = _ipfix_template(601, [(8, 4), (12, 4), (1, 4), (2, 4)])


def _flows(count: int, base: int = 0) -> bytes:
    return _set(601, b"".join(struct.pack("!4s4sII", bytes([10, 0, 0, 1]), bytes([10, 0, 1, i % 250]),
                                          base + i, 1) for i in range(count)))


@pytest.mark.parametrize("probability, rate", [
    (struct.pack("!Q", 1), 0),                     # the smallest denormal: 1/p is inf
    (struct.pack("!d", 1e-310), 0),                # a denormal
    (struct.pack("!d", float("nan")), 0),
    (struct.pack("!d", float("inf")), 0),
    (struct.pack("!d", 2.0), 0),                   # not a probability
    (struct.pack("!d", 0.001), 1000),
])
def test_impossible_sampling_probability_costs_only_itself(probability, rate) -> None:
    bad = _set(600, struct.pack("!I", 1) + probability)
    decoder = FlowDecoder()
    before = metrics.ERRORS.labels("malformed")._value.get()
    datagrams = [(_ipfix(OPTIONS + FLOWS + bad + _flows(52)), "198.51.100.31", EXPORT),
                 (_ipfix(FLOWS + _flows(100, 1000)), "198.51.100.32", EXPORT),
                 (_ipfix(FLOWS + _flows(56, 2000)), "198.51.100.33", EXPORT)]
    flows = decoder.decode_many(datagrams).to_pylist()
    assert len(flows) == 208
    assert sorted(f["Bytes"] for f in flows) == sorted([*range(52), *range(1000, 1100), *range(2000, 2056)])
    first = [f for f in flows if f["Bytes"] < 1000]
    assert {f["SamplingRate"] for f in first} == {rate}
    assert metrics.ERRORS.labels("malformed")._value.get() == before  # handled, not a decoder failure


# --- NetFlow v5: bytes after `00 05` are not a v5 datagram just because they parse --------------

def _v5(count: int, records: list[tuple[int, int]], uptime: int = 3_600_000, pad: bytes = b"") -> bytes:
    """Cisco's v5 layout: a 24-byte header, 48-byte records (first/last in sysUptime ms)."""
    head = struct.pack("!HHIIIIBBH", 5, count, uptime, EXPORT, 0, 1, 0, 0, 0)
    body = b"".join(struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
                                bytes(4), 1, 2, 1, 100, first, last, 1000 + i, 80, 0, 0, 6, 0, 0, 0, 0, 0, 0)
                    for i, (first, last) in enumerate(records))
    return head + body + pad


def test_random_bytes_after_a_v5_version_are_not_stored() -> None:
    import random

    rng = random.Random(15)
    decoder = FlowDecoder()
    before = metrics.ERRORS.labels("implausible")._value.get()
    datagrams = [(b"\x00\x05" + rng.randbytes(rng.randrange(22, 1400)), "198.51.100.40", EXPORT)
                 for _ in range(20_000)]
    rows = sum(decoder.decode_many(datagrams[i:i + 500]).num_rows for i in range(0, len(datagrams), 500))
    # was ~1 row per datagram (20,000 here); a count of 1-30 with plausible times is rare by chance
    assert rows < 200, rows
    assert metrics.ERRORS.labels("implausible")._value.get() - before > 19_000


@pytest.mark.parametrize("records, uptime, kept", [
    ([(3_500_000, 3_590_000)], 3_600_000, 1),                     # ordinary
    ([(3_590_000, 3_590_000)], 3_600_000, 1),                     # a one-packet flow
    ([(0xFFFF0000, 0xFFFFFF00)], 5_000, 1),                       # before the 2^32 ms wrap, exported after it
    ([(3_500_000, 3_700_000)], 3_600_000, 0),                     # ends 100 s after the export
    ([(3_590_000, 3_500_000)], 3_600_000, 0),                     # ends before it starts
    ([(3_500_000, 3_590_000), (3_700_000, 3_800_000)], 3_600_000, 1),  # only the bad record goes
])
def test_v5_records_with_impossible_times_are_dropped_and_counted(records, uptime, kept) -> None:
    before = metrics.ERRORS.labels("implausible")._value.get()
    batch = FlowDecoder().decode(_v5(len(records), records, uptime), "198.51.100.41", EXPORT)
    assert batch.num_rows == kept
    assert metrics.ERRORS.labels("implausible")._value.get() - before == len(records) - kept


def test_a_large_v5_count_is_believed_only_when_the_length_agrees() -> None:
    records = [(3_500_000, 3_590_000)] * 40
    assert FlowDecoder().decode(_v5(40, records), "198.51.100.42", EXPORT).num_rows == 40
    assert FlowDecoder().decode(_v5(40, records[:10]), "198.51.100.42", EXPORT).num_rows == 0
    # a count within Cisco's 30 on a cut datagram keeps its whole records, as before
    assert FlowDecoder().decode(_v5(30, records[:10]), "198.51.100.42", EXPORT).num_rows == 10


@pytest.mark.parametrize("probability, rate", [(0.001, 1000), (1 / 512, 512), (1.0, 1)])
def test_a_sampling_probability_reduced_to_a_float32_is_read_as_one(probability, rate) -> None:
    """RFC 7011 section 6.2: a float64 element may be exported in 4 bytes as a float32."""
    options = _set(3, struct.pack("!HHH", 602, 2, 1) + struct.pack("!HHHH", 149, 4, 311, 4))
    record = _set(602, struct.pack("!I", 1) + struct.pack("!f", probability))
    flows = FlowDecoder().decode(_ipfix(options + FLOWS + record + _flows(3)), "198.51.100.34", EXPORT).to_pylist()
    assert [f["SamplingRate"] for f in flows] == [rate] * 3
