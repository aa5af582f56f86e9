"""What one hostile exporter can cost the decoder (issue 15): per-datagram limits on sets,
rows, template fields and record length, and per-exporter state bounded in bytes (a snapshot
stays under 1 MiB). Datagrams are hand-packed from the RFC 3954 / RFC 7011 layouts."""

from __future__ import annotations

import pickle
import struct

from flows.decode import ExporterState, FlowDecoder, decode_many, limits, metrics
from tests.test_decode_scapy import EXPORT, _ipfix, _ipfix_template, _set


def _errors(reason: str) -> float:
    return metrics.ERRORS.labels(reason)._value.get()


def _v9(sets: bytes, source_id: int = 1) -> bytes:
    return struct.pack("!HHIIII", 9, 1, 10_000, EXPORT, 0, source_id) + sets


def test_a_datagram_of_thousands_of_empty_sets_is_read_up_to_the_set_limit() -> None:
    empty = struct.pack("!HH", 300, 4) * 16_000  # 64,000 bytes of empty data sets
    before = _errors("limit")
    assert FlowDecoder().decode(_v9(empty), "198.51.100.50", EXPORT).num_rows == 0
    assert _errors("limit") == before + 1


def test_sets_after_the_limit_are_not_read() -> None:
    template = struct.pack("!HH", 0, 16) + struct.pack("!HHHH", 400, 2, 1, 4) + struct.pack("!HH", 2, 4)
    data = struct.pack("!HH", 400, 12) + struct.pack("!II", 100, 1)
    sets = template + data * (limits.MAX_SETS_PER_DATAGRAM + 50)
    rows = FlowDecoder().decode(_v9(sets), "198.51.100.51", EXPORT).num_rows
    assert rows == limits.MAX_SETS_PER_DATAGRAM - 1  # the template set is one of them


def test_rows_per_datagram_are_capped() -> None:
    template = _ipfix_template(401, [(1, 4)])  # 4-byte records: 16,000 in one set
    data = _set(401, struct.pack("!I", 7) * 16_000)
    before = _errors("limit")
    batch = FlowDecoder().decode(_ipfix(template + data), "198.51.100.52", EXPORT)
    assert batch.num_rows == limits.MAX_ROWS_PER_DATAGRAM
    assert _errors("limit") > before
    # spread over many sets, the same cap
    data = _set(401, struct.pack("!I", 7) * 500) * 10
    assert FlowDecoder().decode(_ipfix(template + data), "198.51.100.53", EXPORT).num_rows == 2000


def test_variable_length_records_have_a_budget_of_their_own() -> None:
    """Sets decoded one at a time (variable-length fields, walked in Python) draw on their own
    500 records per datagram, beside the datagram's 2,000 rows."""
    template = _ipfix_template(404, [(1, 4), (82, 65535)])  # octetDeltaCount, interfaceName (varlen)
    fixed = _ipfix_template(405, [(1, 4)])
    record = struct.pack("!I", 5) + b"\x00"  # an empty name
    data = _set(404, record * 1_500) * 8  # 12,000 records in 8 sets
    before = _errors("limit")
    batch = FlowDecoder().decode(_ipfix(template + data), "198.51.100.58", EXPORT)
    assert batch.num_rows == limits.MAX_VARIABLE_RECORDS_PER_DATAGRAM
    assert _errors("limit") > before
    # fixed-length records of the same datagram still have the rest of its rows
    mixed = _ipfix(template + fixed + _set(404, record * 1_500) * 2 + _set(405, struct.pack("!I", 6) * 1_500))
    batch = FlowDecoder().decode(mixed, "198.51.100.59", EXPORT)
    assert batch.num_rows == limits.MAX_ROWS_PER_DATAGRAM


def test_a_one_byte_record_template_is_refused() -> None:
    template = _ipfix_template(402, [(4, 1)])  # 65,000 one-byte "flows" per datagram otherwise
    data = _set(402, bytes(60_000))
    before = _errors("bad_template")
    assert FlowDecoder().decode(_ipfix(template + data), "198.51.100.54", EXPORT).num_rows == 0
    assert _errors("bad_template") == before + 1


def test_a_template_with_too_many_fields_is_not_parsed() -> None:
    fields = [(1, 4)] * 16_000
    before = _errors("limit")
    state = ExporterState("198.51.100.55")
    decode_many(state, [(_ipfix(_ipfix_template(403, fields[:16_000])), "x", EXPORT)])
    assert _errors("limit") == before + 1 and not state.templates


def test_exporter_state_is_bounded_in_bytes() -> None:
    """281 datagrams of template sets with ever-new ids (8,000 one-field templates each, as in
    the report that found 2.2M templates kept alive): the state, and its snapshot, stay small."""
    state = ExporterState("198.51.100.56")
    for n in range(40):
        records = b"".join(struct.pack("!HH", 256 + (n * 200 + i) % 65000, 1) + struct.pack("!HH", 1, 4)
                           for i in range(200))
        decode_many(state, [(_ipfix(_set(2, records)), "x", EXPORT)])
    # and templates of the largest allowed size
    fields = [(1, 4), (2, 4), (8, 4), (12, 4)] * (limits.MAX_TEMPLATE_FIELDS // 4)
    for tid in range(300, 400):
        decode_many(state, [(_ipfix(_ipfix_template(tid, fields)), "x", EXPORT)])
    snapshot = pickle.dumps(state)
    assert len(snapshot) <= 1024 * 1024, len(snapshot)
    assert sum(len(key[3]) for key in state.seen_template_sets) <= 256 * 1024
    assert all(state.templates.get(k) is t for learnt in state.seen_template_sets.values() for k, t in learnt)
    restored = pickle.loads(snapshot)
    assert restored.templates.keys() == state.templates.keys() and not restored.seen_template_sets


def test_held_data_is_bounded_in_bytes() -> None:
    state = ExporterState("198.51.100.57")
    body = bytes(8_000)
    for i in range(200):  # data sets for templates that never come
        decode_many(state, [(_ipfix(_set(500 + i % 20, body)), "x", EXPORT)])
    assert sum(len(h[1]) for h in state.held) <= 128 * 1024 and state.held_bytes == sum(len(h[1]) for h in state.held)


def test_the_outlet_drops_the_least_recently_active_exporters_past_its_bounds(monkeypatch) -> None:
    """A flood of sources: past the process's exporter (or byte) bound, the oldest exporter's
    decoder state is dropped at its next tick, counted; a later datagram starts it afresh."""
    from datetime import timedelta

    from flows import outlet_steps

    monkeypatch.setattr(limits, "MAX_EXPORTERS_PER_PROCESS", len(outlet_steps.EXPORTERS) + 3)
    before = outlet_steps.EVICTED._value.get()
    template = _ipfix_template(410, [(8, 4), (1, 4)])
    logics = [outlet_steps.DecodeLogic(timedelta(seconds=1), None) for _ in range(5)]
    for i, logic in enumerate(logics):
        data = _set(410, bytes([10, 0, 0, i]) + struct.pack("!I", 100))
        out, _ = logic.on_batch([[(_ipfix(template + data), f"198.51.100.{70 + i}", EXPORT, 0)]])
        assert out[0].num_rows == 1
    assert outlet_steps.EVICTED._value.get() == before + 2
    assert [logic.on_notify()[1] for logic in logics] == [True, True, False, False, False]
    # an evicted exporter that sends again starts with a new state (its template is gone)
    out, _ = logics[0].on_batch([[(_ipfix(_set(410, bytes(8))), "198.51.100.70", EXPORT, 0)]])
    assert out == [] and not logics[0].evicted
    for logic in logics:
        outlet_steps.EXPORTERS.forget(logic)


def test_the_outlet_bounds_its_exporters_states_in_bytes(monkeypatch) -> None:
    """Past MAX_STATE_BYTES_PER_PROCESS the least recently active states are evicted, counted; a
    state growing keeps its place as the most recent; one state over the whole bound stays alone."""
    from datetime import timedelta

    from flows import outlet_steps

    monkeypatch.setattr(limits, "MAX_STATE_BYTES_PER_PROCESS", 10_000)
    exporters = outlet_steps._Exporters()
    logics = [outlet_steps.DecodeLogic(timedelta(seconds=1), None) for _ in range(4)]
    before = outlet_steps.EVICTED._value.get()
    for logic in logics[:3]:
        exporters.touch(logic, 3_000)
    exporters.touch(logics[0], 4_000)  # grows, and is now the most recent: 9,000 bytes
    assert not any(logic.evicted for logic in logics) and len(exporters) == 3
    exporters.touch(logics[3], 2_000)  # 11,000: the least recently active (logics[1]) goes
    assert [logic.evicted for logic in logics] == [False, True, False, False]
    exporters.touch(logics[2], 50_000)
    assert [logic.evicted for logic in logics] == [True, True, False, True] and len(exporters) == 1
    assert outlet_steps.EVICTED._value.get() == before + 3


def test_released_held_sets_share_the_template_datagrams_row_budget() -> None:
    state = ExporterState("198.51.100.59")
    for _ in range(30):  # data for a template not sent yet, held
        decode_many(state, [(_ipfix(_set(420, struct.pack("!I", 1) * 1_000)), "x", EXPORT)])
    batch = decode_many(state, [(_ipfix(_ipfix_template(420, [(1, 4)])), "x", EXPORT)])
    assert batch.num_rows == limits.MAX_ROWS_PER_DATAGRAM


def test_a_huge_sampler_id_is_not_kept() -> None:
    """An options record whose samplerId is 60,000 bytes long would be a 60 KB state key."""
    state = ExporterState("198.51.100.62")
    options = _set(3, struct.pack("!HHH", 430, 2, 1) + struct.pack("!HHHH", 48, 60_000, 34, 4))
    for i in range(20):
        sampler_id = bytes([i + 1]) + bytes(59_999)  # a 480,000-bit number
        decode_many(state, [(_ipfix(options + _set(430, sampler_id + struct.pack("!I", 100))),
                             "x", EXPORT)])
    assert not state.sampler_rates and len(pickle.dumps(state)) < 64 * 1024


def _varlen_records(count: int) -> bytes:
    return (struct.pack("!II", 100, 1) + b"\x00") * count  # octets, packets, an empty interfaceName


VARLEN_TEMPLATE = [(1, 4), (2, 4), (82, 65535)]


def test_held_sets_a_template_releases_are_charged_to_its_datagram_like_any_other() -> None:
    """Data held for a missing template is released by the datagram that brings it: the
    records are walked under that datagram's budgets (500 read one by one, 2,000 rows)."""
    decoder = FlowDecoder()
    for _ in range(7):  # 7,000 records held
        decoder.decode(_ipfix(_set(400, _varlen_records(1000))), "198.51.100.70", EXPORT)
    released = decoder.decode(_ipfix(_ipfix_template(400, VARLEN_TEMPLATE)), "198.51.100.70", EXPORT)
    assert released.num_rows == limits.MAX_VARIABLE_RECORDS_PER_DATAGRAM
    decoder = FlowDecoder()
    for _ in range(3):
        decoder.decode(_ipfix(_set(400, _varlen_records(1000))), "198.51.100.71", EXPORT)
    fixed = _ipfix_template(401, [(1, 4), (2, 4)]) + _set(401, struct.pack("!II", 1, 1) * 2000)
    both = decoder.decode(_ipfix(_ipfix_template(400, VARLEN_TEMPLATE) + fixed), "198.51.100.71", EXPORT)
    assert both.num_rows == limits.MAX_ROWS_PER_DATAGRAM


def test_options_records_are_read_within_the_one_by_one_budget() -> None:
    """Options data is read in Python record by record: at most 500 per datagram, like the
    variable-length records (4,200 of them cost 16 ms)."""
    options = _ipfix_template(402, [(144, 4), (34, 4)], set_id=3)
    options = struct.pack("!HH", 3, len(options) + 2) + options[4:8] + b"\x00\x01" + options[8:]
    records = _set(402, b"".join(struct.pack("!II", i, 10) for i in range(4200)))
    before = metrics.OPTIONS_RECORDS._value.get()
    limited = _errors("limit")
    FlowDecoder().decode(_ipfix(options + records), "198.51.100.72", EXPORT)
    assert metrics.OPTIONS_RECORDS._value.get() - before == limits.MAX_VARIABLE_RECORDS_PER_DATAGRAM
    assert _errors("limit") > limited


def test_the_chunk_has_every_callback_the_walkers_make() -> None:
    from flows.decode.callbacks import ChunkCallbacks
    from flows.decode.decoder import Chunk

    assert isinstance(Chunk(), ChunkCallbacks)
    assert not isinstance(object(), ChunkCallbacks)
