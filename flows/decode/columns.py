"""Building flow columns with numpy and turning them into one RecordBatch per decode call.

Each decoding path produces a *part*: a row count and a dict of numpy columns named as in
flows/schema.py. Addresses are (n, 16) uint8 arrays (IPv4 as ::ffff:a.b.c.d), times int64 ms,
list columns a ListColumn of offsets and values. `assemble` concatenates the parts once per call,
filling the columns a part lacks with zeros, so no Arrow object is built per datagram or per set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flows import schema

V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


@dataclass
class ListColumn:
    """A list column as Arrow stores it: n+1 int32 offsets into a flat uint32 values array."""

    offsets: np.ndarray
    values: np.ndarray


Part = tuple[int, Mapping[str, object]]


def address_bytes(exporter: str) -> bytes:
    """16-byte IPv6 form of an address string (IPv4 becomes IPv4-mapped); zeros if unparsable."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(exporter)
    except ValueError:
        return bytes(16)
    return V4_MAPPED_PREFIX + ip.packed if ip.version == 4 else ip.packed


def mapped_v4(raw: np.ndarray) -> np.ndarray:
    """(n, 4) uint8 IPv4 addresses → (n, 16) IPv4-mapped IPv6 addresses."""
    out = np.zeros((len(raw), 16), np.uint8)
    out[:, 10:12] = 0xFF
    out[:, 12:16] = raw
    return out


def v6(raw: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 addresses, copied so that they do not keep the datagram buffer alive."""
    return np.ascontiguousarray(raw, dtype=np.uint8)


def strided_view(buffer: bytes, dtype: object) -> np.ndarray:
    """A view of `dtype` items starting at EVERY byte of the buffer (stride 1): indexing it with
    byte offsets reads (or, for a void dtype, gathers whole records) at unaligned positions."""
    dtype = np.dtype(dtype)
    return np.ndarray((len(buffer) - dtype.itemsize + 1,), dtype, buffer, strides=(1,))


def be_uint(raw: np.ndarray) -> np.ndarray:
    """(n, L) big-endian bytes → uint64 values (L of 3, 5, 6, 7 or more: the last 8 bytes)."""
    raw = raw[:, -8:]
    out = np.zeros(len(raw), np.uint64)
    for i in range(raw.shape[1]):
        out = (out << np.uint64(8)) | raw[:, i].astype(np.uint64)
    return out


def _kind(column: schema.Column) -> str:
    t = column.arrow_type
    if pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_list(t):
        return "list"
    if pa.types.is_string(t):
        return "string"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return "number"


def _numpy_dtype(column: schema.Column) -> np.dtype | None:
    t = column.arrow_type
    if pa.types.is_timestamp(t):
        return np.dtype(np.int64)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype())
    return None


# (column, kind, numpy dtype) for every stored column, worked out once.
_PLAN = tuple((c, _kind(c), _numpy_dtype(c)) for c in schema.STORED)
_EMPTY_UINT32 = pa.array(np.zeros(0, np.uint32), pa.uint32())
_zeros = pa.py_buffer(bytes(1 << 20))


def _zero_buffer(size: int) -> pa.Buffer:
    """`size` zero bytes, sliced (no copy) from one shared read-only buffer that grows as needed."""
    global _zeros
    if size > _zeros.size:
        _zeros = pa.py_buffer(bytes(max(size, 2 * _zeros.size)))
    return _zeros.slice(0, size)


def _default(column: schema.Column, kind: str, dtype: np.dtype | None, n: int) -> pa.Array:
    """n default values (zero, empty string, empty list) over slices of the shared zero buffer.
    (Buffer slices, not a slice of a longer cached array: pickling or IPC of an array slice
    would carry the whole longer buffer.)"""
    t = column.arrow_type
    if kind == "string":
        return pa.Array.from_buffers(t, n, [None, _zero_buffer(4 * (n + 1)), _zero_buffer(0)])
    if kind == "list":
        return pa.ListArray.from_buffers(t, n, [None, _zero_buffer(4 * (n + 1))], children=[_EMPTY_UINT32])
    width = t.byte_width if kind == "binary" else dtype.itemsize
    return pa.Array.from_buffers(t, n, [None, _zero_buffer(width * n)])


def _concat_lists(pieces: Sequence[ListColumn | None], sizes: Sequence[int]) -> pa.Array:
    offsets, values, base = [np.zeros(1, np.int32)], [], 0
    for piece, n in zip(pieces, sizes):
        if piece is None:
            offsets.append(np.full(n, base, np.int32))
            continue
        offsets.append(piece.offsets[1:].astype(np.int32) + base)
        values.append(piece.values.astype(np.uint32))
        base += int(piece.offsets[-1])
    flat = np.concatenate(values) if values else np.zeros(0, np.uint32)
    return pa.ListArray.from_arrays(pa.array(np.concatenate(offsets)), pa.array(flat, pa.uint32()))


def _concat(column: schema.Column, kind: str, dtype: np.dtype | None, pieces: list, sizes: list[int]) -> object:
    if kind == "list":
        return _concat_lists(pieces, sizes)
    if kind == "binary":
        width = column.arrow_type.byte_width
        filled = [p if p is not None else np.zeros((n, width), np.uint8) for p, n in zip(pieces, sizes)]
        raw = np.ascontiguousarray(np.concatenate(filled) if len(filled) > 1 else filled[0], np.uint8)
        return pa.FixedSizeBinaryArray.from_buffers(column.arrow_type, len(raw), [None, pa.py_buffer(raw)])
    if len(pieces) == 1:
        values = np.asarray(pieces[0]).astype(dtype, copy=False)
    else:  # one pass: converts each piece (big-endian record fields, wider integers) as it copies
        values = np.concatenate([p if p is not None else np.zeros(n, dtype) for p, n in zip(pieces, sizes)],
                                dtype=dtype, casting="unsafe")
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(column.arrow_type, len(values), [None, pa.py_buffer(values)])


def take_rows(cols: Mapping[str, object], keep: np.ndarray) -> dict:
    """The columns of a part for the rows `keep` only."""
    out = {}
    for name, values in cols.items():
        if isinstance(values, ListColumn):
            lengths = np.diff(values.offsets)
            offsets = np.zeros(int(np.count_nonzero(keep)) + 1, np.int64)
            np.cumsum(lengths[keep], out=offsets[1:])
            out[name] = ListColumn(offsets, values.values[np.repeat(keep, lengths)])
        else:
            out[name] = np.asarray(values)[keep]
    return out


ORIGIN = "_origin"
"""The parts' column of each row's datagram origin (Chunk.add); not a flow column: assemble()
leaves it out and Chunk.finish_with_origins() returns it beside the batch."""


_KNOWN = frozenset(c.name for c in schema.STORED) | {ORIGIN}


class UnknownColumn(KeyError):
    """A decoder produced a column the schema does not have (a typo would lose its data)."""


def assemble(parts: Sequence[Part]) -> pa.RecordBatch:
    """One RecordBatch in the flow schema from the parts (columns absent everywhere get defaults).
    A column name the schema does not know raises UnknownColumn."""
    parts = [(n, cols) for n, cols in parts if n]
    for _, cols in parts:
        if not _KNOWN.issuperset(cols):
            raise UnknownColumn(f"not flow columns: {sorted(set(cols) - _KNOWN)}")
    total = sum(n for n, _ in parts)
    sizes = [n for n, _ in parts]
    arrays = []
    for column, kind, dtype in _PLAN:
        name = column.name
        pieces = [cols.get(name) for _, cols in parts]
        if any(p is not None for p in pieces):
            arrays.append(_concat(column, kind, dtype, pieces, sizes))
        else:
            arrays.append(_default(column, kind, dtype, total))
    # Every array is built here with its schema type, in schema order: no conversion is left
    # for schema.make_batch to do.
    return pa.RecordBatch.from_arrays(arrays, schema=schema.ARROW_SCHEMA)
