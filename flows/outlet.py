"""The outlet dataflow: Kafka → decode per exporter → metadata per exporter → enrich → ClickHouse,
and with alerts.enabled → detection per rule → alerts.

    python -m bytewax.run flows.outlet -w 4 [-r DIR -s 30 -b 0]

Reads the configuration like every waxflow command ($WAXFLOW_CONFIG or ./dataflows.yaml).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from bytewax import operators as op
from bytewax.dataflow import Dataflow

from connectors.alerts import AlertsOutput
from connectors.clickhouse import migrate_or_exit
from connectors.clickhouse_sink import ClickHouseSink
from connectors.config_checks import exit_on_problems
from connectors.geoip import open_geoip
from connectors.http import serve_outlet
from connectors.kafka_consumer import kafka_source
from connectors.snmp import cache_file, snmp_poller
from flows.alerts_step import DetectLogic, RuleBank
from flows.decode.frames import DECAPSULATIONS
from flows.enrich import Enricher
from flows.enrich.metadata import Metadata, metadata_builder
from flows.outlet_steps import decode_builder, enrich_step, sink_item, unwrap_messages
from flows.settings import Settings
from waxflow.process import dataflow_settings


def build_flow(settings: Settings, enrich: bool = True) -> Dataflow:
    """The outlet's steps; `enrich=False` leaves out metadata and enrichment (benchmarks)."""
    flow = Dataflow("outlet")
    messages = op.input("kafka", flow, kafka_source(settings.kafka))
    # A listener's decapsulation mode, by its position in inlet.listeners (the envelope's id).
    modes = tuple(DECAPSULATIONS.index(listener.decapsulation) for listener in settings.inlet.listeners)
    by_exporter = op.flat_map_batch("unwrap", messages, partial(unwrap_messages, decapsulation=modes))
    flows = op.stateful_batch("decode", by_exporter, decode_builder(settings.clickhouse.batch_wait / 2))
    if enrich:
        snmp = settings.enrichment.snmp
        metadata = Metadata(snmp, settings.enrichment.static, snmp_poller(snmp), store=cache_file(snmp))
        described = op.stateful_batch("metadata", flows, metadata_builder(metadata))
        enricher = Enricher(settings.enrichment, open_geoip(settings.enrichment.geoip))
        flows = op.map_value("enrich", described, enrich_step(enricher))
    if settings.alerts.enabled:
        _detection(flows, settings)
    # The sink keeps what it stored per exporter key (exactly-once), so the key goes with each batch.
    items = op.map("to_sink", flows, sink_item)
    op.output("clickhouse", items, ClickHouseSink(settings.clickhouse, settings.data_dir / "delivery"))
    return flow


def _detection(flows: Any, settings: Settings) -> None:
    """Alerts: each worker's batches to per-rule partials, one detector per rule (keyed by its
    name, snapshotted), its events to the store, metrics, webhook and routes."""
    rules = {r.name: r.rule() for r in settings.alerts.all_rules()}
    bank = RuleBank(rules.values())
    partials = op.flat_map("alerts_partials", flows, lambda item: bank.partials(item[1]) if item[1] is not None else [])
    events = op.stateful("alerts_detect", partials, lambda resumed: DetectLogic(rules, resumed))
    op.output("alerts", events, AlertsOutput(settings))


def main_flow(enrich: bool = True) -> Dataflow:
    """The flow `python -m bytewax.run flows.outlet` runs: configuration from the usual place
    (a bad value ends the process naming the key), the HTTP endpoint started, logs on stderr."""
    settings = dataflow_settings()
    exit_on_problems(settings, ("geoip", "kafka", "directories"))
    migrate_or_exit(settings)  # before anything is consumed, not lazily at the first batch
    if settings.kafka.key_mode == "random":
        logging.getLogger("flows.outlet").warning(
            "kafka.key_mode is random: an exporter's datagrams spread over partitions, so after a crash "
            "the replay may decode them in another order and store a few flows twice or not at all; "
            "use by-exporter for exactly-once delivery")
    serve_outlet(settings)
    return build_flow(settings, enrich)


def __getattr__(name: str) -> Dataflow:
    # `flow` is built when Bytewax asks for it, not at import: importing this module (tests,
    # tools) neither reads the configuration nor starts the HTTP endpoint.
    if name == "flow":
        globals()["flow"] = built = main_flow()
        return built
    raise AttributeError(name)
