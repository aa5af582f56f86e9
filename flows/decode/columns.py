"""Building flow columns with numpy and turning them into one RecordBatch per decode call.

Each decoding path produces a *part*: a row count and a dict of numpy columns named as in
flows/schema.py. Addresses are (n, 16) uint8 arrays (IPv4 as ::ffff:a.b.c.d), times int64 ms,
list columns a ListColumn of offsets and values. `assemble` concatenates the parts once per call,
filling the columns a part lacks with zeros, so no Arrow object is built per datagram or per set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

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
    return "number"


def _numpy_dtype(column: schema.Column) -> np.dtype:
    t = column.arrow_type
    return np.dtype(np.int64) if pa.types.is_timestamp(t) else np.dtype(t.to_pandas_dtype())


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


def _concat(column: schema.Column, pieces: list, sizes: list[int]) -> object:
    kind = _kind(column)
    if kind == "list":
        return _concat_lists(pieces, sizes)
    if kind == "binary":
        width = column.arrow_type.byte_width
        filled = [p if p is not None else np.zeros((n, width), np.uint8) for p, n in zip(pieces, sizes)]
        raw = np.ascontiguousarray(np.concatenate(filled) if len(filled) > 1 else filled[0], np.uint8)
        return pa.FixedSizeBinaryArray.from_buffers(column.arrow_type, len(raw), [None, pa.py_buffer(raw)])
    dtype = _numpy_dtype(column)
    filled = [np.asarray(p).astype(dtype, copy=False) if p is not None else np.zeros(n, dtype)
              for p, n in zip(pieces, sizes)]
    values = np.concatenate(filled) if len(filled) > 1 else filled[0]
    if pa.types.is_timestamp(column.arrow_type):
        return pa.array(values, pa.int64()).view(column.arrow_type)
    return pa.array(values, column.arrow_type)


def assemble(parts: Sequence[Part]) -> pa.RecordBatch:
    """One RecordBatch in the flow schema from the parts (columns absent everywhere get defaults)."""
    parts = [(n, cols) for n, cols in parts if n]
    total = sum(n for n, _ in parts)
    sizes = [n for n, _ in parts]
    arrays: dict[str, object] = {}
    for column in schema.STORED:
        pieces = [cols.get(column.name) for _, cols in parts]
        if any(p is not None for p in pieces):
            arrays[column.name] = _concat(column, pieces, sizes)
    return schema.make_batch(arrays, total)
