"""Walking length-prefixed items (NetFlow v9/IPFIX sets, sFlow samples and records) of many
datagrams at once with numpy.

The datagrams of a decode call are joined into one buffer; `lock_step` then reads the k-th item
header of every datagram (or sample) still open in step k, so the Python cost is per step —
about the number of items in the longest one — not per datagram, set or sample. The last few
open ones are finished item by item in Python (`_tail`).
"""

from __future__ import annotations

import struct

import numpy as np

from flows.decode import metrics
from flows.decode.columns import strided_view


def joined(payloads: list[bytes], pad: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """One buffer of the payloads followed by `pad` zero bytes (so fixed-size reads near the end
    stay inside), and each payload's start offset and length."""
    n = len(payloads)
    lengths = np.fromiter(map(len, payloads), np.int64, n)
    starts = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return b"".join(payloads) + bytes(pad), starts, lengths


def lock_step(buffer: bytes, owner: np.ndarray, cursor: np.ndarray, end: np.ndarray, *, header: int,
              inclusive: bool, remaining: np.ndarray | None = None, limit: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk items from each cursor up to its end, for all owners at once. An item is a
    `header`-byte header ending in its big-endian length (u16 in a 4-byte header, NetFlow
    style, the length counting the header: `inclusive`; u32 in an 8-byte header, sFlow style,
    the length of what follows), then its body. With `remaining`, at most that many items per
    owner, and running out of room before them is counted as truncated. With `limit`, at most that
    many items per owner whatever it announces; an owner with room for more is counted (limit).

    Returns each item's owner, start offset and end offset, in buffer order. An inclusive item
    shorter than its header is counted (bad_length) and stops its owner; one that overruns the
    end is counted (truncated) and cut there (NetFlow: its whole records are still decoded);
    an sFlow item that overruns is counted and dropped, and stops its owner.
    """
    lengths = strided_view(buffer, ">u2" if header == 4 else ">u4")
    length_at = header - lengths.dtype.itemsize
    steps = []
    taken = 0
    while owner.size:
        if limit is not None and taken >= limit:  # every owner still open took `limit` items
            over_limit = end - cursor >= header
            if remaining is not None:
                over_limit &= remaining > 0
            count("limit", over_limit)
            break
        if owner.size <= TAIL:
            steps.append(_tail(buffer, owner, cursor, end, header, inclusive, remaining,
                               None if limit is None else limit - taken))
            break
        taken += 1
        room = end - cursor >= header
        if remaining is not None:
            live = remaining > 0
            count("truncated", live & ~room)
            room &= live
        owner, cursor, end, remaining = _keep(room, owner, cursor, end, remaining)
        if not owner.size:
            break
        length = lengths[cursor + length_at]  # big-endian; sums with the int64 cursors are int64
        following = cursor + length if inclusive else cursor + header + length
        over = following > end
        bad = length < header if inclusive else None  # a zero length would never move on
        if over.any() or (inclusive and bad.any()):
            owner, cursor, end, remaining, following = _problems(
                owner, cursor, end, remaining, following, over, bad)
        steps.append((owner, cursor, following))
        cursor = following
        if remaining is not None:
            remaining = remaining - 1
    if not steps:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    owner, start, following = (np.concatenate(column) for column in zip(*steps))
    order = np.argsort(start, kind="stable")  # offsets grow with datagram and position
    return owner[order], start[order], following[order]


# Owners still open when the walk goes on in Python, one item at a time. A numpy step costs
# about as much as ~50 items walked in Python; and a datagram of thousands of tiny items (a
# hostile exporter can send one) must cost thousands of cheap Python steps, not numpy ones.
TAIL = 16
_LENGTH = {4: struct.Struct("!H"), 8: struct.Struct("!I")}


def _tail(buffer: bytes, owner: np.ndarray, cursor: np.ndarray, end: np.ndarray, header: int,
          inclusive: bool, remaining: np.ndarray | None, limit: int | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lock_step for the last few owners, in Python (same items, same counting)."""
    unpack, length_at = _LENGTH[header].unpack_from, header - _LENGTH[header].size
    owners, starts, ends = [], [], []
    truncated = bad = limited = 0
    left = [-1] * len(owner) if remaining is None else remaining.tolist()  # -1: no item limit
    for who, at, stop, items in zip(owner.tolist(), cursor.tolist(), end.tolist(), left):
        allowed = -1 if limit is None else limit
        while items != 0:
            if allowed == 0:
                limited += stop - at >= header
                break
            allowed -= 1
            if stop - at < header:
                truncated += items > 0  # fewer items than announced
                break
            (length,) = unpack(buffer, at + length_at)
            if inclusive:
                if length < header:
                    bad += 1
                    break
                following = at + length
                if following > stop:
                    truncated += 1
                    following = stop
            else:
                following = at + header + length
                if following > stop:
                    truncated += 1
                    break
            owners.append(who)
            starts.append(at)
            ends.append(following)
            at, items = following, items - 1
    if truncated:
        metrics.error("truncated", truncated)
    if limited:
        metrics.error("limit", limited)
    if bad:
        metrics.error("bad_length", bad)
    return np.array(owners, np.int64), np.array(starts, np.int64), np.array(ends, np.int64)


def _problems(owner, cursor, end, remaining, following, over, bad) -> tuple:
    """Count a step's bad items: a length below the header (bad_length: its owner stops), or
    an item past its owner's end (truncated: a NetFlow set, `bad` given, is cut at the end, its
    whole records still decoded; an sFlow item is dropped and its owner stops)."""
    if bad is None:
        count("truncated", over)
        return _keep(~over, owner, cursor, end, remaining, following)
    count("bad_length", bad)
    count("truncated", over & ~bad)
    following = np.minimum(following, end)
    return _keep(~bad, owner, cursor, end, remaining, following)


def _keep(mask: np.ndarray, *arrays: np.ndarray | None) -> tuple:
    if mask.all():
        return arrays
    return tuple(None if a is None else a[mask] for a in arrays)


def count(reason: str, mask: np.ndarray) -> None:
    """Count the True entries of `mask` as errors of `reason` (once, not per entry)."""
    n = int(np.count_nonzero(mask))
    if n:
        metrics.error(reason, n)
