"""NetFlow v5: a 24-byte header and fixed 48-byte records, decoded as one numpy view per call."""

from __future__ import annotations

import struct

import numpy as np

from flows.decode import metrics
from flows.decode.callbacks import ChunkCallbacks
from flows.decode.columns import ORIGIN, mapped_v4
from flows.decode.state import ExporterState

HEADER = struct.Struct("!HHIIIIBBH")  # version count uptime secs nsecs sequence engine type/id sampling
RECORD = np.dtype([
    ("src", "u1", (4,)), ("dst", "u1", (4,)), ("nexthop", "u1", (4,)), ("input", ">u2"),
    ("output", ">u2"), ("packets", ">u4"), ("octets", ">u4"), ("first", ">u4"), ("last", ">u4"),
    ("srcport", ">u2"), ("dstport", ">u2"), ("pad1", "u1"), ("flags", "u1"), ("proto", "u1"),
    ("tos", "u1"), ("src_as", ">u2"), ("dst_as", ">u2"), ("src_mask", "u1"), ("dst_mask", "u1"),
    ("pad2", ">u2"),
])
MAX_COUNT = 30  # Cisco's limit; a larger count is believed only when the length agrees exactly
CLOCK_SKEW_MS = 1000  # how far after sysUptime a record's times may lie


def walk_v5(chunk: ChunkCallbacks, state: ExporterState, data: bytes, received: float, origin: int = 0) -> None:
    """Queue the records of one v5 datagram; whole records of a cut datagram are kept."""
    if len(data) < HEADER.size:
        metrics.error("truncated")
        return
    _, count, uptime, secs, nsecs, _, _, _, sampling = HEADER.unpack_from(data)
    available = (len(data) - HEADER.size) // RECORD.itemsize
    if count > MAX_COUNT and len(data) != HEADER.size + count * RECORD.itemsize:
        # Any bytes after `00 05` parse as a v5 header: a count no router sends, with a length
        # that does not agree, is not a v5 datagram.
        metrics.error("implausible")
        return
    if available < count:
        metrics.error("truncated")
        count = available
    elif len(data) != HEADER.size + count * RECORD.itemsize:
        metrics.error("bad_length")  # extra bytes after the records: ignore them
    if count == 0:
        return
    # The low 14 bits are the interval; 0 means unsampled.
    rate = (sampling & 0x3FFF) or 1
    export_ms = secs * 1000 + nsecs // 1_000_000
    chunk.v5.append((data[HEADER.size:HEADER.size + count * RECORD.itemsize], count,
                     (export_ms, uptime, int(received), rate, origin), state.address))


def _ago(uptime: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Milliseconds from a record's sysUptime value to the header's, across the 2^32 ms wrap."""
    return ((uptime - value.astype(np.int64)) & 0xFFFFFFFF).astype(np.uint32).view(np.int32).astype(np.int64)


def _plausible(uptime: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Records whose flow ended no later than the header's sysUptime (give or take the skew) and
    started no later than it ended."""
    first_ago, last_ago = _ago(uptime, first), _ago(uptime, last)
    return (last_ago >= -CLOCK_SKEW_MS) & (first_ago >= last_ago - CLOCK_SKEW_MS)


def v5_columns(sets: list) -> tuple[int, dict]:
    """All queued v5 records of a call → one part of flow columns."""
    body = b"".join(s[0] for s in sets)
    counts = np.array([s[1] for s in sets], np.int64)
    meta = np.array([s[2] for s in sets], np.int64)
    exporters = np.frombuffer(b"".join(s[3] for s in sets), np.uint8).reshape(-1, 16)
    rec = np.frombuffer(body, RECORD)
    export_ms, uptime, received, rate, origin = (np.repeat(meta[:, i], counts) for i in range(5))

    def at(uptime_values: np.ndarray) -> np.ndarray:
        return export_ms - _ago(uptime, uptime_values)

    plausible = _plausible(uptime, rec["first"], rec["last"])
    if not plausible.all():
        metrics.error("implausible", int(np.count_nonzero(~plausible)))
        rec, export_ms, uptime, received, rate, origin = (
            a[plausible] for a in (rec, export_ms, uptime, received, rate, origin))
        exporters_kept = np.repeat(exporters, counts, axis=0)[plausible]
    else:
        exporters_kept = np.repeat(exporters, counts, axis=0)
    proto = rec["proto"]
    dstport = rec["dstport"]
    icmp = proto == 1
    cols = {
        "TimeReceived": received, "SamplingRate": rate, ORIGIN: origin,
        "ExporterAddress": exporters_kept,
        "SrcAddr": mapped_v4(rec["src"]), "DstAddr": mapped_v4(rec["dst"]),
        "NextHop": mapped_v4(rec["nexthop"]), "InIfIndex": rec["input"], "OutIfIndex": rec["output"],
        "Packets": rec["packets"], "Bytes": rec["octets"],
        "TimeFlowStart": at(rec["first"]), "TimeFlowEnd": at(rec["last"]),
        "SrcPort": rec["srcport"], "DstPort": dstport, "TCPFlags": rec["flags"], "Proto": proto,
        "IPTos": rec["tos"], "SrcAS": rec["src_as"], "DstAS": rec["dst_as"],
        "SrcNetMask": rec["src_mask"], "DstNetMask": rec["dst_mask"],
        "EType": np.full(len(rec), 0x800, np.uint32),
        # v5 has no ICMP fields: exporters put type * 256 + code in the destination port.
        "ICMPv4Type": np.where(icmp, dstport >> 8, 0), "ICMPv4Code": np.where(icmp, dstport & 0xFF, 0),
    }
    return len(rec), cols
