"""Enrichment: flow batch → flow batch, working per batch on unique keys (exporters, addresses).

Steps run in the order the design gives: metadata (exporter and interface names, filled by the
metadata step before this one; the exporter's address names it until then), classification
(rejected flows leave here), GeoIP/networks, sampling rate. Providers that talk to the outside
live in connectors/ and are handed in (GeoIP files: connectors/geoip.py, opened by flows/outlet.py).
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from flows.enrich.addresses import AddressEnricher
from flows.enrich.classify import Classification
from flows.enrich.columns import metadata_blank
from flows.enrich.exporters import name_fallback
from flows.enrich.networks import Networks
from flows.enrich.sampling import SamplingRates
from flows.settings import Enrichment


class Chain:
    """The enrichment steps with their caches, for one worker thread."""

    def __init__(self, cfg: Enrichment, geoip: Any) -> None:
        self.classification = Classification(cfg.classifiers)
        self.addresses = AddressEnricher(Networks(cfg.networks), geoip, cfg.geoip)
        self.sampling = SamplingRates(cfg.sampling)

    def __call__(self, batch: pa.RecordBatch, keyed_by_index: bool = False) -> pa.RecordBatch:
        """`keyed_by_index`: what the metadata step says of the batch (metadata.Described); a
        batch with no metadata at all is keyed by index trivially."""
        keyed_by_index = keyed_by_index or metadata_blank(batch)
        batch = name_fallback(batch)  # the address as the name: still a function of the address
        if self.classification:
            batch = self.classification.apply(batch, keyed_by_index)
        batch = self.addresses.apply(batch)
        return self.sampling.apply(batch)


class Enricher:
    """The enrichment chain, built from the `enrichment` settings; one object serves every
    worker thread of a process. The GeoIP databases (large) are shared; each thread has its own
    chain of caches, so no lock is taken per batch and no thread sees another's half-built cache.

    `geoip` is the databases the settings name, opened by the caller (connectors.geoip.open_geoip:
    the files are I/O); None looks nothing up in GeoIP.
    """

    def __init__(self, cfg: Enrichment, geoip: Any = None) -> None:
        self.cfg = cfg
        self.geoip = geoip
        self.local = threading.local()
        # The constructing thread's chain is built now: a bad setting fails at startup.
        self.local.chain = Chain(cfg, self.geoip)

    @property
    def chain(self) -> Chain:
        chain = getattr(self.local, "chain", None)
        if chain is None:
            chain = self.local.chain = Chain(self.cfg, self.geoip)
        return chain

    def __call__(self, batch: pa.RecordBatch, keyed_by_index: bool = False) -> pa.RecordBatch:
        return self.chain(batch, keyed_by_index)
