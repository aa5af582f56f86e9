"""Exactly-once delivery from Kafka to the store: which rows were already stored.

Every row the outlet decodes carries its *origin* — the Kafka partition and offset of the
datagram whose decoding emitted it, and the partition's offset *generation* (0, then one more
each time the Kafka source found the partition's offsets started again: a broker that lost its
data, a recreated topic) — in an extra column (ORIGIN_COLUMN) that the sink strips before
inserting. For one exporter (the dataflow's key) and one partition, rows reach the sink in
order: the inlet keys messages by exporter, Bytewax keeps the order of one key, the metadata
step releases an exporter's batches in order, and the sink inserts whole batches in arrival
order. So after each acknowledged insert the sink can keep, per (exporter, partition), one
*mark*: the highest position (generation, then offset) and the latest TimeReceived it stored.
A row is already stored exactly when its position and its TimeReceived are both within the mark.

After a crash, Bytewax replays from its last snapshot; the rows that replay produces again are
decoded exactly as before (same decoder state, same datagrams in the same order) and carry the
same origins, so the marks drop precisely those that were stored. The TimeReceived half of the
test is a second guard for offsets that started again unseen (the recovery store and the
consumer group's offsets both gone): their new messages were received after everything stored.

Pure logic; the durable copy of the marks and the insert log live in connectors/delivery_log.py.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ORIGIN_COLUMN = "_origin"
OFFSET_BITS = 40  # offsets up to 1.1e12 per partition
PARTITION_BITS = 15  # partitions up to 32,767
GENERATION_SHIFT = PARTITION_BITS  # in the partition number the Kafka source hands on
MAX_GENERATION = 255  # offset generations (resets of a partition), in the origin's top bits
OFFSET_MASK = (1 << OFFSET_BITS) - 1
PARTITION_MASK = (1 << PARTITION_BITS) - 1
MAX_MARKS = 200_000
"""(exporter, partition) marks kept; past it the least recently advanced is forgotten (its
exporter silent for longer than any replay reaches back). ~150 bytes each: ≤ 30 MB."""

Key = tuple[str, int]  # (exporter key, Kafka partition)


def origin(partition: int, offset: int) -> int:
    """The origin number of a Kafka message; `partition` may carry an offset generation in its
    high bits (connectors/kafka_consumer.py: after the partition's offsets started again)."""
    return (partition << OFFSET_BITS) | offset


def split_origins(origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origins → (partitions, positions): a position is the offset, after its generation."""
    origins = np.asarray(origins, np.int64)
    generations = origins >> (OFFSET_BITS + PARTITION_BITS)
    return (origins >> OFFSET_BITS) & PARTITION_MASK, (generations << OFFSET_BITS) | (origins & OFFSET_MASK)


@dataclass(frozen=True, slots=True)
class Mark:
    """What is stored of one exporter's rows from one partition: positions (generation, then
    offset) up to `position`, received up to `received` (TimeReceived, unix seconds)."""

    position: int
    received: int

    def joined(self, other: Mark) -> Mark:
        return Mark(max(self.position, other.position), max(self.received, other.received))


def with_origins(batch: pa.RecordBatch, origins: np.ndarray) -> pa.RecordBatch:
    """The flow batch with its origin column appended."""
    return batch.append_column(ORIGIN_COLUMN, pa.array(np.asarray(origins, np.int64), pa.int64()))


def without_origins(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The flow batch as the store takes it."""
    index = batch.schema.get_field_index(ORIGIN_COLUMN)
    return batch if index < 0 else batch.remove_column(index)


def _origins(batch: pa.RecordBatch) -> np.ndarray:
    return batch.column(ORIGIN_COLUMN).to_numpy(zero_copy_only=False)


def _received(batch: pa.RecordBatch) -> np.ndarray:
    return batch.column("TimeReceived").cast(pa.int64()).to_numpy(zero_copy_only=False)


def _by_partition(partitions: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """(partition, its rows) for each partition of a batch; rows None: all of them (the usual
    case of one partition, found without np.unique)."""
    first = int(partitions[0])
    if partitions[-1] == first and (partitions == first).all():
        return [(first, None)]
    return [(int(p), partitions == p) for p in np.unique(partitions)]


def coverage(items: Iterable[tuple[str, pa.RecordBatch]]) -> dict[Key, Mark]:
    """The marks a block of (exporter, batch) items reaches, per (exporter, partition): one
    grouping over the whole block, not a pass per item (a block holds hundreds of them)."""
    tracked = [(exporter, batch) for exporter, batch in items
               if batch.num_rows and batch.schema.get_field_index(ORIGIN_COLUMN) >= 0]
    if not tracked:
        return {}  # rows of no known origin (tools, tests) are not tracked
    names = sorted({exporter for exporter, _ in tracked})
    index = {name: i for i, name in enumerate(names)}
    owner = np.repeat(np.array([index[e] for e, _ in tracked], np.int64), [b.num_rows for _, b in tracked])
    origins = pa.chunked_array([b.column(ORIGIN_COLUMN) for _, b in tracked]).to_numpy()
    partitions, positions = split_origins(origins)
    received = pa.chunked_array([b.column("TimeReceived") for _, b in tracked]).cast(pa.int64()).to_numpy()
    key = owner * (PARTITION_MASK + 1) + partitions
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    keys = key[starts]
    highest = np.maximum.reduceat(positions[order], starts)
    latest = np.maximum.reduceat(received[order], starts)
    return {(names[int(k) >> PARTITION_BITS], int(k) & PARTITION_MASK): Mark(int(h), int(r))
            for k, h, r in zip(keys.tolist(), highest.tolist(), latest.tolist())}


class Marks:
    """The marks of one sink partition, bounded (MAX_MARKS, least recently advanced forgotten)."""

    def __init__(self, marks: Mapping[Key, Mark] | None = None, limit: int = MAX_MARKS) -> None:
        self._marks: OrderedDict[Key, Mark] = OrderedDict(marks or {})
        self.limit = limit
        self._forgotten: list[Key] = []
        self._trim()

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, key: Key) -> Mark | None:
        return self._marks.get(key)

    def advance(self, reached: Mapping[Key, Mark]) -> None:
        """An insert covering `reached` was acknowledged."""
        marks = self._marks
        for key, mark in reached.items():
            old = marks.pop(key, None)
            marks[key] = mark if old is None else old.joined(mark)
        self._trim()

    def _trim(self) -> None:
        while len(self._marks) > self.limit:
            self._forgotten.append(self._marks.popitem(last=False)[0])

    def take_forgotten(self) -> list[Key]:
        """Keys dropped by the bound since the last call (for the durable copy to drop too)."""
        out, self._forgotten = self._forgotten, []
        return out

    def unstored(self, exporter: str, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of one exporter's batch not already stored (all of them, but after a replay)."""
        if not batch.num_rows or not self._marks or batch.schema.get_field_index(ORIGIN_COLUMN) < 0:
            return batch
        partitions, positions = split_origins(_origins(batch))
        stored = None
        for partition, rows in _by_partition(partitions):
            mark = self._marks.get((exporter, partition))
            if mark is None:
                continue
            if (positions.min() if rows is None else positions[rows].min()) > mark.position:
                continue  # the usual case: everything new
            hit = (positions <= mark.position) & (_received(batch) <= mark.received)
            if rows is not None:
                hit &= rows
            stored = hit if stored is None else stored | hit
        if stored is None or not stored.any():
            return batch
        return batch.filter(pc.invert(pa.array(stored)))
