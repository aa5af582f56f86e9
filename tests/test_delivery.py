"""Exactly-once bookkeeping, pure parts: every decoded row carries the origin of the datagram
whose decoding emitted it (held records: the datagram whose template released them), whatever
the version and however a call's datagrams are cut; the marks drop exactly the stored rows."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from flows.decode import ExporterState
from flows.decode.decoder import decode_with_origins
from flows.delivery import Mark, Marks, coverage, origin, split_origins, with_origins
from tests.outlet_process import v5_datagram
from tests.test_decode_scapy import EXPORT, _ipfix, _ipfix_template, _set
from tests.test_decode_sflow import _datagram, _flow_sample, _raw_header, _record

TEMPLATE = _ipfix_template(420, [(8, 4), (1, 4)])  # sourceIPv4Address, octetDeltaCount


def _data(*octets: int) -> bytes:
    return _set(420, b"".join(bytes([10, 0, 0, 1]) + struct.pack("!I", o) for o in octets))


def _sflow() -> bytes:
    frame = bytes(12) + b"\x08\x00" + bytes([0x45, 0, 0, 40]) + bytes(8) + bytes([6, 0, 0, 0]) + bytes(8) + bytes(20)
    return _datagram([_flow_sample([_record(1, _raw_header(frame))]) for _ in range(3)])


def _decode(datagrams: list[tuple[bytes, int]], state: ExporterState | None = None):
    state = state or ExporterState("198.51.100.80")
    batch, origins = decode_with_origins(state, [(payload, "x", EXPORT, tag) for payload, tag in datagrams])
    assert len(origins) == batch.num_rows
    return batch, origins


def test_each_row_carries_its_datagrams_origin_in_every_version() -> None:
    datagrams = [(_ipfix(TEMPLATE + _data(1, 2)), origin(3, 10)), (v5_datagram(1, flows=4), origin(3, 11)),
                 (_sflow(), origin(3, 12)), (_ipfix(_data(5)), origin(3, 13))]
    batch, origins = _decode(datagrams)
    by_origin = dict(zip(*np.unique(origins, return_counts=True)))
    assert by_origin == {origin(3, 10): 2, origin(3, 11): 4, origin(3, 12): 3, origin(3, 13): 1}
    octets = dict(zip(batch.column("Bytes").to_pylist(), origins.tolist()))
    assert octets[5] == origin(3, 13) and octets[1] == octets[2] == origin(3, 10)


def test_held_records_belong_to_the_datagram_whose_template_released_them() -> None:
    batch, origins = _decode([(_ipfix(_data(7)), origin(0, 1)), (_ipfix(_data(8)), origin(0, 2)),
                              (_ipfix(TEMPLATE), origin(0, 3))])
    assert sorted(batch.column("Bytes").to_pylist()) == [7, 8]
    assert origins.tolist() == [origin(0, 3)] * 2


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_rows_and_origins_do_not_depend_on_how_a_stream_is_cut_into_calls(cut: int) -> None:
    """A recovery replay cuts the datagrams into other calls: each datagram gives the same rows."""
    stream = [(_ipfix(_data(1)), origin(0, 1)), (_ipfix(TEMPLATE + _data(2)), origin(0, 2)),
              (_ipfix(_data(3, 4)), origin(0, 3)), (v5_datagram(2, flows=2), origin(0, 4)),
              (_ipfix(_data(5)), origin(0, 5))]

    def rows(pieces: list) -> list[tuple[int, int]]:
        state, out = ExporterState("198.51.100.81"), []
        for piece in pieces:
            batch, origins = _decode(piece, state)
            out += list(zip(origins.tolist(), batch.column("Bytes").to_pylist()))
        return sorted(out)

    assert rows([stream[:cut], stream[cut:]]) == rows([stream]) == rows([[d] for d in stream])


def test_marks_drop_the_stored_rows_only() -> None:
    batch, origins = _decode([(_ipfix(TEMPLATE + _data(1, 2)), origin(1, 100)), (_ipfix(_data(3)), origin(1, 101)),
                              (_ipfix(_data(4)), origin(2, 5))])
    tagged = with_origins(batch, origins)
    reached = coverage([("e", tagged)])
    received = int(batch.column("TimeReceived")[0].as_py())
    assert reached == {("e", 1): Mark(101, received), ("e", 2): Mark(5, received)}
    marks = Marks({("e", 1): Mark(100, received)})
    assert sorted(marks.unstored("e", tagged).column("Bytes").to_pylist()) == [3, 4]
    assert marks.unstored("other", tagged).num_rows == 4  # marks are per exporter
    later = Marks({("e", 1): Mark(101, received - 1), ("e", 2): Mark(5, received)})
    assert later.unstored("e", tagged).num_rows == 3  # received after what was stored: new
    assert split_origins(np.array([origin(7, 123)])) == (7, 123)


def test_marks_are_bounded() -> None:
    marks = Marks(limit=3)
    for i in range(5):
        marks.advance({(f"e{i}", 0): Mark(i, 0)})
    assert len(marks) == 3 and marks.take_forgotten() == [("e0", 0), ("e1", 0)] and marks.get(("e4", 0))


def test_a_new_offset_generation_is_never_taken_for_a_replay() -> None:
    """After the partition's offsets started again (generation 1 in the partition number's high
    bits), small offsets are new rows even received in the same second as the last stored."""
    from flows.delivery import GENERATION_SHIFT

    batch, origins = _decode([(_ipfix(TEMPLATE + _data(1)), origin(3, 5)),
                              (_ipfix(_data(2)), origin(3 | 1 << GENERATION_SHIFT, 5))])
    tagged = with_origins(batch, origins)
    received = int(batch.column("TimeReceived")[0].as_py())
    marks = Marks({("e", 3): Mark(1000, received)})  # generation 0 stored up to offset 1000
    assert marks.unstored("e", tagged).column("Bytes").to_pylist() == [2]
    reached = coverage([("e", tagged)])
    assert list(reached) == [("e", 3)] and reached[("e", 3)].position == (1 << 40) | 5
    assert split_origins(origins)[0].tolist() == [3, 3]
