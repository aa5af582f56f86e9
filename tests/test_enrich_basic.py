"""Enrichment that works before the providers of issue 6: exporter name fallback, sampling rates."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows import schema
from flows.enrich import Enricher, sampling
from flows.envelope import address_bytes
from flows.settings import Enrichment, Sampling


def batch(exporters: list[str], rates: list[int], names: list[str] | None = None) -> pa.RecordBatch:
    n = len(exporters)
    columns = {"ExporterAddress": [address_bytes(e) for e in exporters], "SamplingRate": rates,
               "Bytes": [10] * n}
    if names is not None:
        columns["ExporterName"] = names
    return schema.make_batch(columns, n)


def test_exporter_name_falls_back_to_address() -> None:
    out = Enricher(Enrichment())(batch(["192.0.2.1", "2001:db8::7", "192.0.2.1"], [1, 1, 1],
                                       ["", "", "edge1"]))
    assert out.column("ExporterName").to_pylist() == ["192.0.2.1", "2001:db8::7", "edge1"]


def test_override_then_default_then_missing_kept() -> None:
    cfg = Sampling(default=None, defaults={"192.0.2.0/24": 100},
                   override={"198.51.100.0/24": 1000, "198.51.100.7/32": 7}, missing="keep")
    before = sampling.UNKNOWN_RATE.labels("keep")._value.get()
    out = sampling.SamplingRates(cfg).apply(batch(
        ["198.51.100.1", "198.51.100.7", "192.0.2.5", "192.0.2.5", "203.0.113.1"], [10, 10, 0, 50, 0]))
    assert out.column("SamplingRate").to_pylist() == [1000, 7, 100, 50, 1]
    assert sampling.UNKNOWN_RATE.labels("keep")._value.get() == before + 1


def test_global_default_and_drop() -> None:
    with_default = sampling.SamplingRates(Sampling(default=64)).apply(batch(["192.0.2.1"] * 2, [0, 8]))
    assert with_default.column("SamplingRate").to_pylist() == [64, 8]
    before = sampling.UNKNOWN_RATE.labels("drop")._value.get()
    dropped = sampling.SamplingRates(Sampling(missing="drop")).apply(batch(["192.0.2.1"] * 3, [0, 8, 0]))
    assert dropped.column("SamplingRate").to_pylist() == [8]
    assert sampling.UNKNOWN_RATE.labels("drop")._value.get() == before + 2


@pytest.mark.parametrize("rates", [[], [5]])
def test_small_batches(rates: list[int]) -> None:
    out = sampling.SamplingRates(Sampling()).apply(batch(["192.0.2.1"] * len(rates), rates))
    assert out.column("SamplingRate").to_pylist() == rates
