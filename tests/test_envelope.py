"""The envelope: layout, round trip, and rejection of what is not an envelope."""

from __future__ import annotations

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


def test_encode_many_matches_encode() -> None:
    exporter = envelope.address_bytes("198.51.100.9")
    datagrams = [(b"a" * n, exporter, 2000 + n, 10**18 + n) for n in range(5)]
    assert envelope.encode_many(1, 7, datagrams) == [
        envelope.encode("netflow", 7, received, exporter, port, payload)
        for payload, exporter, port, received in datagrams]
