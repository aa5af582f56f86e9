"""The outlet dataflow: Kafka → decode per exporter → metadata per exporter → enrich → ClickHouse.

    python -m bytewax.run flows.outlet -w 4 [-r DIR -s 30 -b 0]

Reads the configuration like every waxflow command ($WAXFLOW_CONFIG or ./dataflows.yaml).
"""

from bytewax import operators as op
from bytewax.dataflow import Dataflow

from connectors.clickhouse import ClickHouseSink
from connectors.http import serve_outlet
from connectors.kafka_consumer import kafka_source
from connectors.snmp import cache_file, snmp_poller
from flows.enrich import Enricher
from flows.enrich.metadata import Metadata, metadata_builder
from flows.outlet_steps import decode_builder, enrich_step, unwrap_messages
from flows.settings import load_settings

settings = load_settings()
serve_outlet(settings)

flow = Dataflow("outlet")
messages = op.input("kafka", flow, kafka_source(settings.kafka))
by_exporter = op.flat_map_batch("unwrap", messages, unwrap_messages)
flows = op.stateful_batch("decode", by_exporter, decode_builder(settings.clickhouse.batch_wait / 2))
snmp = settings.enrichment.snmp
metadata = Metadata(snmp, settings.enrichment.static, snmp_poller(snmp), store=cache_file(snmp))
described = op.stateful_batch("metadata", flows, metadata_builder(metadata))
enriched = op.map_value("enrich", described, enrich_step(Enricher(settings.enrichment)))
op.output("clickhouse", enriched, ClickHouseSink(settings.clickhouse))
