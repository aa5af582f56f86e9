"""Enrichment: flow batch → flow batch, working per batch on unique keys (exporters, addresses).

Steps run in the order the design gives: metadata (exporter and interface names, filled by the
metadata step before this one; the exporter's address names it until then), classification
(rejected flows leave here), GeoIP/networks, sampling rate. Providers that talk to the outside
live in connectors/ (GeoIP files: connectors/geoip.py).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flows.enrich.addresses import AddressEnricher
from flows.enrich.classify import Classification
from flows.enrich.exporters import name_fallback
from flows.enrich.networks import Networks
from flows.enrich.sampling import SamplingRates
from flows.settings import Enrichment


def open_geoip(cfg: Enrichment) -> Any:
    """The configured GeoIP databases (None when there are none); a file that does not open
    is a ConfigError naming its key."""
    if not (cfg.geoip.asn_database or cfg.geoip.geo_database):
        return None
    from connectors.geoip import GeoIPDatabases

    return GeoIPDatabases(cfg.geoip)


class Enricher:
    """The enrichment chain for one worker, built from the `enrichment` settings.

    `geoip` replaces the databases opened from the settings (tests inject a clock this way).
    """

    def __init__(self, cfg: Enrichment, geoip: Any = None) -> None:
        self.classification = Classification(cfg.classifiers)
        self.addresses = AddressEnricher(Networks(cfg.networks),
                                         geoip if geoip is not None else open_geoip(cfg), cfg.geoip)
        self.sampling = SamplingRates(cfg.sampling)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        batch = name_fallback(batch)
        if self.classification:
            batch = self.classification.apply(batch)
        batch = self.addresses.apply(batch)
        return self.sampling.apply(batch)
