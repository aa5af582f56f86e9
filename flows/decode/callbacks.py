"""What the walkers (netflow.py, v5.py) hand their records to: the calls they make on the
decoder's Chunk (decoder.py), which decodes everything queued in one call at its end.

A Protocol rather than the Chunk itself: the walkers are imported by decoder.py, and reading
them should not need the Chunk's body to know what a call may do.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from flows.decode import limits
from flows.decode.state import ExporterState

Piece = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Records of one template (a structured array), then per record: export time ms, sysUptime ms,
receive time s, origin (flows/delivery.py), decapsulation mode (frames.DECAPSULATIONS)."""
V5Datagram = tuple[bytes, int, tuple[int, int, int, int, int], bytes]
"""A v5 datagram's records, their count, (export ms, sysUptime ms, receive s, sampling rate,
origin), the exporter's address."""


class TemplateGroup(Protocol):
    """The records of one template queued in this call."""

    pieces: list[Piece]


@runtime_checkable
class ChunkCallbacks(Protocol):
    v5: list[V5Datagram]
    """v5 datagrams queued in this call, decoded together at its end."""

    def data_set(self, state: ExporterState, key: tuple[int, int, int], body: bytes, meta: tuple,
                 received: float | None, most: int = limits.MAX_ROWS_PER_DATAGRAM) -> int:
        """Decode one v9/IPFIX data set on its own (or hold it for its template when `received`
        is given): at most `most` records; how many it queued or, for options data, read."""
        ...

    def group(self, state: ExporterState, template: Any, version: int, domain: int) -> TemplateGroup:
        """The queue of the template's records in this call (created on first use)."""
        ...


__all__ = ["ChunkCallbacks", "TemplateGroup", "Piece", "V5Datagram"]
