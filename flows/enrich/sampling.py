"""Sampling rate: per-subnet overrides, defaults for flows that came without one, and what to do
with flows whose rate stays unknown (kept at rate 1, or dropped — counted either way)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prometheus_client import Counter

from flows.enrich.columns import drop_rows, encode, fixed_values, replace
from flows.enrich.subnets import SubnetMap
from flows.settings import Sampling

UNKNOWN_RATE = Counter("waxflow_enrich_sampling_unknown_flows_total",
                       "flows that arrived without a sampling rate and had no default, by the "
                       "action of enrichment.sampling.missing (keep: stored at rate 1, drop)",
                       ["action"])
OVERRIDDEN = Counter("waxflow_enrich_sampling_overridden_flows_total",
                     "flows whose sampling rate was replaced by a configured override")
DEFAULTED = Counter("waxflow_enrich_sampling_defaulted_flows_total",
                    "flows without a sampling rate that got a configured default")


class SamplingRates:
    def __init__(self, cfg: Sampling) -> None:
        self.cfg = cfg
        self.override = SubnetMap(cfg.override)
        self.defaults = SubnetMap(cfg.defaults)

    @staticmethod
    def _per_exporter(exporters: tuple[np.ndarray, list[bytes]], table: SubnetMap[int],
                      fallback: int | None) -> np.ndarray | None:
        """Rate per row from the exporter's subnet (0 where none applies), or None if none does."""
        index, distinct = exporters
        rates = [table.lookup(address) or fallback or 0 for address in distinct]
        if not any(rates):
            return None
        return np.array(rates, np.uint64)[index]

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return batch
        index, distinct = encode(batch.column("ExporterAddress"))
        exporters = index, fixed_values(distinct)
        rate = batch.column("SamplingRate").to_numpy(zero_copy_only=False).copy()
        if self.override:
            forced = self._per_exporter(exporters, self.override, None)
            if forced is not None:
                OVERRIDDEN.inc(int(np.count_nonzero(forced)))
                rate = np.where(forced > 0, forced, rate)
        missing = rate == 0
        if missing.any():
            default = self._per_exporter(exporters, self.defaults, self.cfg.default)
            if default is not None:
                DEFAULTED.inc(int(np.count_nonzero(missing & (default > 0))))
                rate = np.where(missing, default, rate)
            missing = rate == 0
        keep = None
        if missing.any():
            count = int(missing.sum())
            UNKNOWN_RATE.labels(self.cfg.missing).inc(count)
            if self.cfg.missing == "drop":
                keep = ~missing
            rate[missing] = 1
        batch = replace(batch, {"SamplingRate": pa.array(rate, pa.uint64())})
        return drop_rows(batch, keep) if keep is not None else batch
