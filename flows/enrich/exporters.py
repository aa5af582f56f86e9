"""Exporter names: until metadata (SNMP/static, issue 6) names an exporter, its address does."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from flows.enrich.columns import encode, fixed_values, replace
from flows.envelope import address_text


def name_fallback(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Fill empty ExporterName with the exporter's address in text form."""
    if batch.num_rows == 0:
        return batch
    names = batch.column("ExporterName")
    empty = pc.equal(names, "")
    if not pc.any(empty).as_py():
        return batch
    index, distinct = encode(batch.column("ExporterAddress"))
    texts = pa.array([address_text(a) for a in fixed_values(distinct)], pa.string())
    return replace(batch, {"ExporterName": pc.if_else(empty, texts.take(pa.array(index)), names)})


__all__ = ["name_fallback"]
