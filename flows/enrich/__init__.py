"""Enrichment: flow batch → flow batch, working per batch on unique keys (exporters, addresses).

Steps run in the order the design gives: metadata (exporter and interface names), classification,
GeoIP/networks, sampling rate. Providers that talk to the outside live in connectors/.
"""

from __future__ import annotations

import pyarrow as pa

from flows.enrich.exporters import name_fallback
from flows.enrich.sampling import SamplingRates
from flows.settings import Enrichment


class Enricher:
    """The enrichment chain for one worker, built from the `enrichment` settings."""

    def __init__(self, cfg: Enrichment) -> None:
        self.sampling = SamplingRates(cfg.sampling)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        batch = name_fallback(batch)
        return self.sampling.apply(batch)
