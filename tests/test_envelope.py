"""The envelope: layout, round trip, and rejection of what is not an envelope."""

from __future__ import annotations

import numpy as np
import pytest

from flows import envelope
from flows.envelope import Envelope, EnvelopeError


def test_round_trip_ipv4() -> None:
    message = envelope.encode("netflow", 3, 1_700_000_000_123_456_789, "192.0.2.7", 40000,
                              b"\x00\x05payload")
    got = envelope.decode(message)
    assert got == Envelope("netflow", 3, 1_700_000_000_123_456_789,
                           b"\x00" * 10 + b"\xff\xff" + bytes([192, 0, 2, 7]), 40000,
                           b"\x00\x05payload")
    assert got.exporter_address == "192.0.2.7"


def test_round_trip_ipv6_and_sflow() -> None:
    got = envelope.decode(envelope.encode("sflow", 65535, 0, "2001:db8::1", 6343, b""))
    assert (got.decoder, got.listener_id, got.exporter_address, got.payload) == (
        "sflow", 65535, "2001:db8::1", b"")


def test_layout_is_fixed() -> None:
    """The header is part of the contract with the outlet: pin every byte."""
    message = envelope.encode("sflow", 0x0102, 0x0A0B0C0D0E0F1011, "10.0.0.1", 0x1234, b"xyz")
    assert envelope.HEADER_SIZE == 30
    assert message[:30] == (bytes([1, 2, 1, 2]) + bytes.fromhex("0a0b0c0d0e0f1011")
                            + bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]) + b"\x12\x34")
    assert message[30:] == b"xyz"


def test_payload_is_byte_identical_for_all_byte_values() -> None:
    payload = bytes(range(256)) * 200
    assert envelope.decode(envelope.encode("netflow", 0, 1, "::ffff:1.2.3.4", 1, payload)).payload == payload


@pytest.mark.parametrize("message,reason", [
    (b"", "shorter than the header"),
    (b"\x01" * 29, "shorter than the header"),
    (bytes([2, 1]) + bytes(28), "version 2"),
    (bytes([1, 9]) + bytes(28), "unknown decoder kind 9"),
])
def test_rejects_what_is_not_an_envelope(message: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        envelope.decode(message)


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(EnvelopeError, match="unknown decoder"):
        envelope.encode("jflow", 0, 0, "10.0.0.1", 1, b"")
    with pytest.raises(EnvelopeError, match="16 bytes"):
        envelope.encode("netflow", 0, 0, b"\x01\x02\x03\x04", 1, b"")


def test_topic_carries_the_version() -> None:
    assert envelope.topic_name("flows") == "flows-v1"


@pytest.mark.parametrize("per_datagram_time", [True, False])
def test_write_headers_in_place_round_trip_through_decode(per_datagram_time: bool) -> None:
    """Headers written in place in front of payloads (the inlet's receive slots) decode to
    what encode() makes, for IPv4-mapped and IPv6 exporters, one time each or one for all."""
    exporters = ["192.0.2.7", "2001:db8::1", "198.51.100.255"]
    ports = [2055, 65535, 1]
    payloads = [b"\x00\x0apayload", b"", bytes(range(256))]
    times = [1_700_000_000_000_000_001, 0, 2**63 + 5]
    width = envelope.HEADER_SIZE + 256 + 10
    slots = np.full((3, width), 0xEE, np.uint8)   # garbage the header must overwrite
    for row, payload in zip(slots, payloads):
        row[envelope.HEADER_SIZE:envelope.HEADER_SIZE + len(payload)] = np.frombuffer(payload,
                                                                                      np.uint8)
    packed = np.array([list(envelope.address_bytes(a)) for a in exporters], np.uint8)
    port_rows = np.array([list(p.to_bytes(2, "big")) for p in ports], np.uint8)
    received = np.array(times, np.uint64) if per_datagram_time else times[0]
    envelope.write_headers(slots, 2, 513, received, packed, port_rows)
    for index, payload in enumerate(payloads):
        message = slots[index, :envelope.HEADER_SIZE + len(payload)].tobytes()
        stamp = times[index] if per_datagram_time else times[0]
        assert message == envelope.encode("sflow", 513, stamp, exporters[index], ports[index],
                                          payload)
        got = envelope.decode(message)
        assert (got.decoder, got.listener_id, got.received_ns, got.exporter_address,
                got.exporter_port, got.payload) == ("sflow", 513, stamp, exporters[index],
                                                    ports[index], payload)
    assert (slots[:, envelope.HEADER_SIZE + 256:] == 0xEE).all()   # payload room untouched
