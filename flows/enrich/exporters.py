"""Exporter names: until metadata (SNMP/static, issue 6) names an exporter, its address does."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from flows.envelope import address_text


def name_fallback(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Fill empty ExporterName with the exporter's address in text form."""
    if batch.num_rows == 0:
        return batch
    names = batch.column("ExporterName")
    empty = pc.equal(names, "")
    if not pc.any(empty).as_py():
        return batch
    exporters = batch.column("ExporterAddress")
    unique = pc.unique(exporters)
    texts = pa.array([address_text(a) for a in unique.to_pylist()], pa.string())
    index = pc.index_in(exporters, value_set=unique)
    filled = pc.if_else(empty, pc.take(texts, index), names)
    position = batch.schema.get_field_index("ExporterName")
    return batch.set_column(position, batch.schema.field(position), filled)


__all__ = ["name_fallback"]
