"""The inlet's on-disk spool: envelopes Kafka did not take, kept in order until it does.

A FIFO of length-prefixed records in segment files (`<n>.seg`, at most SEGMENT_BYTES each) in
one directory per producer worker, bounded by `max_bytes` on disk. The head (segment, offset)
is kept in `head` and moved only when the records before it have been acknowledged by the
broker (ProducerPartition's replay), so a killed inlet replays, at its next start, what it had
spooled and not yet seen delivered.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

SEGMENT_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct("!I")


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        segments = sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())
        self._head_segment, self._head_offset = self._valid_head(self._read_head(segments), segments)
        for number in segments:
            if number < self._head_segment:
                self._path(number).unlink()  # fully delivered before the last stop
        self._segments = [n for n in segments if n >= self._head_segment] or [self._head_segment]
        self._truncate_torn_tail(self._path(self._segments[-1]))
        self._tail = open(self._path(self._segments[-1]), "ab")
        self.bytes = sum(self._path(n).stat().st_size for n in self._segments) - self._head_offset
        self.messages = self._count()

    # --- appending (the worker and the delivery callbacks) ---

    def append(self, values: list[bytes]) -> int:
        """Add records at the tail; returns how many were kept: those that fitted within
        max_bytes and that the disk took (a write error — a full disk — never raises: the
        record being written is cut off again and the rest are not kept)."""
        kept = 0
        with self._lock:
            try:
                for value in values:
                    size = _LENGTH.size + len(value)
                    if self.bytes + size > self.max_bytes:
                        break
                    if self._tail.tell() + size > SEGMENT_BYTES and self._tail.tell():
                        self._roll()
                    start = self._tail.tell()
                    try:
                        self._tail.write(_LENGTH.pack(len(value)) + bytes(value))
                        self._tail.flush()  # in the kernel's hands: survives the process being killed
                    except OSError:
                        self._tail.seek(start)
                        self._tail.truncate(start)
                        raise
                    self.bytes += size
                    self.messages += 1
                    kept += 1
            except OSError:
                pass  # the caller counts what was not kept
        return kept

    def _roll(self) -> None:
        self._tail.close()
        number = self._segments[-1] + 1
        self._segments.append(number)
        self._tail = open(self._path(number), "ab")

    # --- reading from the head (the replay thread) ---

    def peek(self, most: int, most_bytes: int = 16 * 1024 * 1024) -> tuple[list[bytes], tuple[int, int], int]:
        """Up to `most` records from the head, the position after them and their size on disk
        (for `advance`)."""
        with self._lock:
            segment, offset = self._head_segment, self._head_offset
            out: list[bytes] = []
            taken = 0
            while len(out) < most and taken < most_bytes:
                if segment == self._segments[-1]:
                    self._tail.flush()
                data = self._read(segment, offset, max(most_bytes - taken, 1 << 17))
                if len(data) >= _LENGTH.size and not _records(data, 1)[0]:
                    # one record longer than what was read: read it whole
                    data = self._read(segment, offset, _LENGTH.size + _LENGTH.unpack_from(data)[0])
                records, used = _records(data, most - len(out))
                out += records
                taken += used
                offset += used
                if records:
                    continue
                if segment == self._segments[-1]:
                    break
                segment, offset = segment + 1, 0
            return out, (segment, offset), taken

    def advance(self, position: tuple[int, int], count: int, size: int) -> None:
        """The records up to `position` were delivered: forget them (durably). The head moves
        first, files go after: a kill in between leaves files a restart deletes, never a head
        pointing into a file that is gone."""
        with self._lock:
            segment, offset = position
            self._write_head(segment, offset)
            self._head_segment, self._head_offset = segment, offset
            for number in [n for n in self._segments if n < segment]:
                self._path(number).unlink(missing_ok=True)
            self._segments = [n for n in self._segments if n >= segment]
            self.bytes -= size
            self.messages -= count
            if not self.messages and self._segments == [segment] and offset:
                self._reset(segment)

    def _reset(self, segment: int) -> None:
        """Everything delivered: start a new empty segment so the spool's files shrink to nothing."""
        self._tail.close()
        self._tail = open(self._path(segment + 1), "ab")
        self._write_head(segment + 1, 0)
        self._segments = [segment + 1]
        self._head_segment, self._head_offset = segment + 1, 0
        self.bytes = 0
        self._path(segment).unlink(missing_ok=True)

    def _write_head(self, segment: int, offset: int) -> None:
        head = self.directory / "head"
        partial = head.with_suffix(".tmp")
        partial.write_text(f"{segment} {offset}\n")
        os.replace(partial, head)

    def close(self) -> None:
        with self._lock:
            self._tail.close()

    # --- files ---

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:08d}.seg"

    def _read(self, segment: int, offset: int, most: int) -> bytes:
        with open(self._path(segment), "rb") as handle:
            handle.seek(offset)
            return handle.read(most)  # at least one whole record: a datagram and its envelope

    @staticmethod
    def _truncate_torn_tail(path: Path) -> None:
        """A record the process was killed while writing is cut off, so appends stay framed."""
        if not path.exists():
            return
        data = path.read_bytes()
        _, whole = _records(data, 1 << 62)
        if whole < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(whole)

    def _valid_head(self, head: tuple[int, int], segments: list[int]) -> tuple[int, int]:
        """The head as written, unless a kill left it pointing at a file that is gone or past
        a file's end: then the oldest data there is."""
        segment, offset = head
        if segments and segment < segments[0]:
            return segments[0], 0
        path = self._path(segment)
        size = path.stat().st_size if path.exists() else 0
        return segment, min(offset, size)

    def _read_head(self, segments: list[int]) -> tuple[int, int]:
        try:
            segment, offset = (int(v) for v in (self.directory / "head").read_text().split())
            return segment, offset
        except (OSError, ValueError):
            return (segments[0] if segments else 0), 0

    def _count(self) -> int:
        total, segment, offset = 0, self._head_segment, self._head_offset
        for number in self._segments:
            with open(self._path(number), "rb") as handle:
                handle.seek(offset if number == segment else 0)
                total += len(_records(handle.read(), 1 << 62)[0])
        return total


def _records(data: bytes, most: int) -> tuple[list[bytes], int]:
    """Whole records at the start of `data` (a record cut by a crash mid-write is not one)."""
    out, at = [], 0
    while len(out) < most and at + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, at)
        end = at + _LENGTH.size + length
        if end > len(data):
            break
        out.append(data[at + _LENGTH.size:end])
        at = end
    return out, at
