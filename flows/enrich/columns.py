"""Batch helpers shared by the enrichment steps: distinct keys of a batch, attribute tables
built per distinct key, and column replacement.

Enrichment works on the distinct keys of a batch (addresses, exporters, interfaces), never per
flow: a batch is hashed once per key column by Arrow, the Python work is per distinct key
(and only for keys not seen before), and the per-flow columns are built by numpy/Arrow `take`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import Counter

LOOKUPS = Counter("waxflow_enrich_lookups_total",
                  "distinct keys of a batch looked up in an enrichment cache, by cache "
                  "(address, exporter, interface) and result (hit, miss)", ["cache", "result"])


METADATA_STRINGS = ("ExporterName", "InIfName", "OutIfName", "InIfDescription", "OutIfDescription")
METADATA_NUMBERS = ("InIfSpeed", "OutIfSpeed")


def metadata_blank(batch: pa.RecordBatch) -> bool:
    """No exporter or interface metadata in the batch yet, as the decoders emit it: names and
    descriptions empty (O(1) each), speeds zero."""
    return (all(holds_nothing(batch.column(name)) for name in METADATA_STRINGS)
            and not any(np.any(batch.column(name).to_numpy(zero_copy_only=False))
                        for name in METADATA_NUMBERS))


def _constant_index(array: pa.Array) -> bool:
    """A FixedSizeBinary array holding one value (checked on its buffer: a sample first, so a
    mixed array costs almost nothing)."""
    if not pa.types.is_fixed_size_binary(array.type) or array.null_count or not len(array):
        return False
    width = array.type.byte_width
    values = np.frombuffer(array.buffers()[1], f"V{width}", count=len(array), offset=array.offset * width)
    if width % 8 == 0:  # compared as integers: several times faster than void compares
        values = values.view(np.uint64).reshape(len(array), width // 8)
    return bool((values[::97] == values[0]).all() and (values == values[0]).all())


def encode(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Row → index of its value among the array's distinct values, and those values, in one
    hash pass (distinct values in order of first appearance). A FixedSizeBinary array with one
    value (the exporter address of a per-exporter batch) is recognised without hashing."""
    if isinstance(array, pa.Array) and _constant_index(array):
        return np.zeros(len(array), np.int64), array.slice(0, 1)
    encoded = pc.dictionary_encode(array)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


def fixed_values(array: pa.Array) -> list[bytes]:
    """A FixedSizeBinary array as a list of bytes, through numpy (20x faster than to_pylist)."""
    width = array.type.byte_width
    return np.frombuffer(array.buffers()[1], f"V{width}", count=len(array),
                         offset=array.offset * width).tolist()


def first_rows(inverse: np.ndarray, count: int) -> np.ndarray:
    """The first row holding each of `count` distinct keys."""
    if count == 1:
        return np.zeros(1, np.int64)
    first = np.empty(count, np.int64)
    # Later writes win: writing in reverse leaves each key's first row.
    first[inverse[::-1]] = np.arange(len(inverse) - 1, -1, -1)
    return first


def combine(indices: Sequence[np.ndarray], sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose index tuples are equal share one key: (key per row, first row of each key).

    The indices come from `encode` of several columns (sizes: their distinct counts); their
    product is re-compacted whenever it could overflow 63 bits.
    """
    if len(indices[0]) and all(count <= 1 for count in sizes):  # one key: the per-exporter batch
        return np.zeros(len(indices[0]), np.int64), np.zeros(1, np.int64)
    key = indices[0].astype(np.int64)
    size = max(sizes[0], 1)
    for index, count in zip(indices[1:], sizes[1:]):
        count = max(count, 1)
        if size * count >= 2**62:
            key, distinct = encode(pa.array(key))
            size = len(distinct)
        key = key * count + index
        size *= count
    inverse, distinct = encode(pa.array(key))
    return inverse, first_rows(inverse, len(distinct))


def replace(batch: pa.RecordBatch, columns: Mapping[str, pa.Array]) -> pa.RecordBatch:
    """The batch with these columns replaced (same names and types)."""
    for name, values in columns.items():
        position = batch.schema.get_field_index(name)
        batch = batch.set_column(position, batch.schema.field(position), values)
    return batch


def holds_nothing(column: pa.Array) -> bool:
    """A string or list column whose every value is empty (read from its offsets, O(1))."""
    if not (pa.types.is_string(column.type) or pa.types.is_list(column.type)):
        return False
    offsets = np.frombuffer(column.buffers()[1], np.int32)
    return bool(offsets[column.offset] == offsets[column.offset + len(column)])


def drop_rows(batch: pa.RecordBatch, keep: np.ndarray, rewritten: Collection[str] = ()) -> pa.RecordBatch:
    """The rows where `keep` is true. Filtering copies every column (~0.15 us per flow for the
    whole schema); string and list columns that hold nothing yet (the attributes later steps
    fill, MPLS labels of most exporters) and the `rewritten` columns (the caller replaces them
    next) are cut to the new length instead (a slice, O(1))."""
    count = int(np.count_nonzero(keep))
    if count == batch.num_rows:
        return batch
    mask = pa.array(keep)
    arrays = [column.slice(0, count) if name in rewritten or holds_nothing(column) else column.filter(mask)
              for name, column in zip(batch.schema.names, batch.columns)]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def fixed_binary(values: np.ndarray, width: int) -> pa.Array:
    """numpy `S<width>` values → a FixedSizeBinary array without a Python loop."""
    raw = np.ascontiguousarray(values.astype(f"S{width}"))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(raw), [None, pa.py_buffer(raw)])


def repeat_string(value: str, n: int) -> pa.Array:
    """n copies of one string: a slice of a cached longer column when it is small (exporter
    attributes of per-exporter batches are the same few strings batch after batch)."""
    capacity = 1 << max(n - 1, 1023).bit_length()  # n rounded up to a power of two, >= 1024
    if capacity * len(value.encode()) <= _REPEAT_CACHED_BYTES:
        return _repeated(value, capacity).slice(0, n)
    return _repeat(value, n)


_REPEAT_CACHED_BYTES = 1 << 21
"""Largest cached column of repeated strings (bytes of data); 32 of them at most."""


@lru_cache(maxsize=32)
def _repeated(value: str, n: int) -> pa.Array:
    return _repeat(value, n)


def _repeat(value: str, n: int) -> pa.Array:
    """n copies of one string, straight from buffers."""
    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(data)
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data * n))
    return pa.array([value] * n, pa.string())


class Profiles:
    """Distinct attribute tuples, numbered. Many keys (addresses, interfaces) share a few
    profiles; a batch's columns are one `take` from an array per attribute.

    The per-attribute arrays grow by their new tail only: with many profiles (a full GeoIP
    City database gives thousands of (AS, city) pairs) a batch bringing one new profile must
    not rebuild them all from Python objects.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.position = {name: i for i, name in enumerate(self.names)}
        self.ids: dict[tuple, int] = {}
        self.rows: list[tuple] = []
        self._arrays: dict[str, tuple[int, Any, bool]] = {}  # key → (profiles in it, array, any set)

    def __len__(self) -> int:
        return len(self.rows)

    def intern(self, row: tuple) -> int:
        found = self.ids.get(row)
        if found is None:
            found = self.ids[row] = len(self.rows)
            self.rows.append(row)
        return found

    def clear(self) -> None:
        self.ids.clear()
        self.rows.clear()
        self._arrays.clear()

    def _grown(self, key: str, name: str, build: Callable[[list], Any],
               join: Callable[[Any, Any], Any]) -> tuple[Any, bool]:
        count, array, nonempty = self._arrays.get(key, (0, None, False))
        if count < len(self.rows) or array is None:
            i = self.position[name]
            tail = [row[i] for row in self.rows[count:]]
            array = build(tail) if array is None else join(array, build(tail))
            nonempty = nonempty or any(tail)
            self._arrays[key] = (len(self.rows), array, nonempty)
        return array, nonempty

    def strings(self, name: str) -> pa.Array | None:
        """The attribute per profile as strings, or None when every profile leaves it empty."""
        array, nonempty = self._grown(name, name, lambda tail: pa.array(tail, pa.string()),
                                      lambda a, b: pa.concat_arrays([a, b]))
        return array if nonempty else None

    def numbers(self, name: str, dtype: Any) -> np.ndarray:
        array, _ = self._grown(f"{name}/{np.dtype(dtype).str}", name,
                               lambda tail: np.array(tail, dtype), lambda a, b: np.concatenate([a, b]))
        return array

    def take_strings(self, name: str, ids: np.ndarray, constant: bool = False) -> pa.Array | None:
        """The attribute per row (None when every profile leaves it empty); `constant` says
        every row has the same id, which builds the column without a take."""
        table = self.strings(name)
        if table is None:
            return None
        if constant and len(ids):
            return repeat_string(table[int(ids[0])].as_py(), len(ids))
        return table.take(pa.array(ids))


class KeyCache:
    """key → profile id, resolving keys not seen before.

    Bounded in two generations: keys go to the young map; when it holds `limit / 2` keys it
    becomes the old map (the previous old one is dropped) and keys found there move back to the
    young one. Keys in use stay cached, keys no longer seen leave after two generations, and
    high-cardinality traffic never makes a whole batch cold at once. The profiles (few, but
    growing with new attribute combinations) start over past `limit`, with the keys.

    `row_ids` serves a whole column of FixedSizeBinary keys (addresses): the distinct keys of
    recent batches are kept as one Arrow array with their ids, and a batch is matched against
    it in one Arrow pass; only the keys it does not hold reach the maps. That set is rebuilt
    from the current batch's keys when it outgrows a quarter of the batch (matching costs in
    proportion to its size).
    """

    def __init__(self, name: str, profiles: Profiles, resolve: Callable[[Hashable], tuple],
                 limit: int = 500_000) -> None:
        self.name = name
        self.profiles = profiles
        self.resolve = resolve
        self.limit = limit
        self.young: dict[Hashable, int] = {}
        self.old: dict[Hashable, int] = {}
        self.hits = LOOKUPS.labels(name, "hit")
        self.misses = LOOKUPS.labels(name, "miss")
        self.recent: pa.Array | None = None  # distinct keys of recent batches (row_ids)
        self.recent_ids = np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def clear(self) -> None:
        self.young, self.old = {}, {}
        self.recent, self.recent_ids = None, np.zeros(0, np.int32)
        self.profiles.clear()

    def row_ids(self, values: pa.Array) -> np.ndarray:
        """Profile id of each row of a FixedSizeBinary column of keys."""
        if len(self.profiles) > self.limit:
            self.clear()  # now, not between the matches below and the maps' answers
        ids = np.empty(len(values), np.int32)
        missed = np.ones(len(values), bool)
        used = np.zeros(0, bool)
        if self.recent is not None and len(values):
            position = pc.index_in(values, value_set=self.recent).fill_null(-1).to_numpy()
            missed = position < 0
            found = position[~missed]
            ids[~missed] = self.recent_ids[found]
            used = np.bincount(found, minlength=len(self.recent)) > 0
            self.hits.inc(int(np.count_nonzero(used)))
        new = pa.array([], values.type)
        if missed.any():
            index, new = encode(values.filter(pa.array(missed)) if self.recent is not None else values)
            new_ids = self.ids(fixed_values(new))
            ids[missed] = new_ids[index]
        else:
            new_ids = np.zeros(0, np.int32)
        if self.recent is None or len(self.recent) + len(new) > max(len(values) // 4, 1024):
            if self.recent is not None:  # rebuilt from this batch's keys
                new = pa.concat_arrays([self.recent.filter(pa.array(used)), new])
                new_ids = np.concatenate([self.recent_ids[used], new_ids])
            self.recent, self.recent_ids = new, new_ids
        elif len(new):
            self.recent = pa.concat_arrays([self.recent, new])
            self.recent_ids = np.concatenate([self.recent_ids, new_ids])
        return ids

    def ids(self, keys: Sequence[Hashable]) -> np.ndarray:
        """Profile id of each key. Call before reading the profiles for this batch: a cache
        past its limit is cleared here, never between ids() and the take that uses them."""
        if len(self.profiles) > self.limit:
            self.clear()
        young, old = self.young, self.old
        get = young.get
        out = [get(key) for key in keys]
        missing = 0
        if None in out:
            for i, found in enumerate(out):
                if found is None:
                    key = keys[i]
                    found = old.get(key)
                    if found is None:
                        found = self.profiles.intern(self.resolve(key))
                        missing += 1
                    out[i] = young[key] = found
        if len(young) > self.limit // 2:
            self.old, self.young = young, {}
        self.hits.inc(len(out) - missing)
        if missing:
            self.misses.inc(missing)
        return np.array(out, np.int32)
