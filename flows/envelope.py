"""The inlet→outlet message: a fixed binary header, then the datagram exactly as received.

Layout of version 1 (network byte order, 30 bytes, then the payload):

    offset size field
    0      1    format version (1)
    1      1    decoder kind: 1 = netflow (v5/v9/IPFIX), 2 = sflow
    2      2    listener id (the listener's position in `inlet.listeners`)
    4      8    receive time, ns since the Unix epoch (kernel timestamp when available)
    12     16   exporter address, IPv6 or IPv4-mapped IPv6 (::ffff:a.b.c.d)
    28     2    exporter UDP port
    30     ...  the datagram

The topic name carries the version (`flows-v1`): a new layout means a new topic, so a
consumer never meets a format it does not know. Pure functions only: no sockets here.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

import numpy as np

ENVELOPE_VERSION = 1

DECODER_KINDS = {"netflow": 1, "sflow": 2}
DECODER_NAMES = {code: name for name, code in DECODER_KINDS.items()}

HEADER = struct.Struct("!BBHQ16sH")
HEADER_SIZE = HEADER.size  # 30
# The same layout as a numpy record, for writing many headers in one operation (the inlet).
HEADER_DTYPE = np.dtype([("version", "u1"), ("kind", "u1"), ("listener", ">u2"),
                         ("received", ">u8"), ("exporter", "V16"), ("port", ">u2")])
assert HEADER_DTYPE.itemsize == HEADER_SIZE
EXPORTER = slice(12, 28)   # where the exporter address sits: the inlet's Kafka key

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


class EnvelopeError(ValueError):
    """A message that is not a valid envelope (too short, unknown version or decoder kind)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    decoder: str           # "netflow" or "sflow"
    listener_id: int
    received_ns: int
    exporter: bytes        # 16 bytes, IPv4-mapped for IPv4
    exporter_port: int
    payload: bytes

    @property
    def exporter_address(self) -> str:
        """The exporter as text: `192.0.2.1` for an IPv4-mapped address, else the IPv6 form."""
        return address_text(self.exporter)


def address_bytes(address: str) -> bytes:
    """`192.0.2.1` → 16 bytes ::ffff:192.0.2.1; `2001:db8::1` → its 16 bytes."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
    return _V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, address)


def address_text(packed: bytes) -> str:
    """The inverse of address_bytes (IPv4-mapped addresses come back as dotted quads)."""
    if packed[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return str(ipaddress.IPv6Address(packed))


def header(decoder_kind: int, listener_id: int, received_ns: int, exporter: bytes,
           exporter_port: int) -> bytes:
    """The 30-byte header alone (the inlet prepends it to each datagram)."""
    return HEADER.pack(ENVELOPE_VERSION, decoder_kind, listener_id, received_ns, exporter,
                       exporter_port)


def encode(decoder: str, listener_id: int, received_ns: int, exporter: bytes | str,
           exporter_port: int, payload: bytes) -> bytes:
    """One envelope; `exporter` is 16 packed bytes or an address in text form."""
    if isinstance(exporter, str):
        exporter = address_bytes(exporter)
    if len(exporter) != 16:
        raise EnvelopeError(f"exporter address must be 16 bytes, got {len(exporter)}")
    try:
        kind = DECODER_KINDS[decoder]
    except KeyError:
        raise EnvelopeError(f"unknown decoder kind {decoder!r}") from None
    return header(kind, listener_id, received_ns, exporter, exporter_port) + payload


def decode(message: bytes) -> Envelope:
    """Parse one envelope; raise EnvelopeError on anything that is not version 1."""
    if len(message) < HEADER_SIZE:
        raise EnvelopeError(f"message of {len(message)} bytes is shorter than the header")
    version, kind, listener_id, received_ns, exporter, port = HEADER.unpack_from(message)
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"envelope version {version}, this build reads {ENVELOPE_VERSION}")
    if kind not in DECODER_NAMES:
        raise EnvelopeError(f"unknown decoder kind {kind}")
    return Envelope(DECODER_NAMES[kind], listener_id, received_ns, exporter, port,
                    bytes(message[HEADER_SIZE:]))


def topic_name(base: str) -> str:
    """`flows` → `flows-v1`: old and new envelope formats never share a topic."""
    return f"{base}-v{ENVELOPE_VERSION}"


def write_headers(slots: np.ndarray, decoder_kind: int, listener_id: int,
                  received_ns: np.ndarray | int, exporters: np.ndarray, ports: np.ndarray) -> None:
    """Write the headers of many envelopes in place: row i of `slots` (uint8, at least
    HEADER_SIZE wide) gets the header of datagram i, whose payload follows it in that row.
    `received_ns` is one time per datagram or one for all; `exporters` are (n, 16) uint8 rows
    (IPv4-mapped for IPv4), `ports` are (n, 2) uint8 rows in network order, as in a sockaddr."""
    headers = np.empty(len(slots), HEADER_DTYPE)
    headers["version"] = ENVELOPE_VERSION
    headers["kind"] = decoder_kind
    headers["listener"] = listener_id
    headers["received"] = received_ns
    headers["exporter"] = np.ascontiguousarray(exporters).view("V16")[:, 0]
    headers["port"] = np.ascontiguousarray(ports).view(">u2")[:, 0]
    slots[:, :HEADER_SIZE] = headers.view(np.uint8).reshape(len(slots), HEADER_SIZE)
