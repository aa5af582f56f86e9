"""The outlet's Kafka input: Bytewax's KafkaSource on the inlet's topic, one Bytewax partition per
Kafka partition, started from the recovery snapshot when there is one, else from where the
configuration says."""

from __future__ import annotations

import json
import logging

from bytewax.connectors.kafka import KafkaSource, _KafkaSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED
from prometheus_client import Gauge

from flows import envelope
from flows.settings import Kafka

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "waxflow_kafka_consumer_lag",
    "messages in the partition not yet read by the outlet: the partition's high watermark (from "
    "the broker's fetch responses, in librdkafka statistics every statistics.interval.ms) minus "
    "the next offset the dataflow reads",
    ["topic", "partition"])

_STARTS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END, "committed": OFFSET_STORED}


def topic_name(cfg: Kafka) -> str:
    """The topic carries the envelope version, so old and new formats never mix."""
    return envelope.topic_name(cfg.topic)


def consumer_config(cfg: Kafka) -> dict[str, str]:
    """librdkafka settings for the outlet's consumers.

    A recovery snapshot, when present, decides the start offset. Without one, `committed`
    resumes from the group's committed offsets (earliest when it has none); offsets are
    committed as messages are consumed, so a crash without recovery may skip what was consumed
    but not yet inserted — run with recovery (`-r`) for no loss.
    """
    config = {
        "group.id": cfg.consumer_group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "true" if cfg.start_offset == "committed" else "false",
        "fetch.max.bytes": str(64 * 1024 * 1024),
        "queued.max.messages.kbytes": str(256 * 1024),
    }
    config.update({key: str(value) for key, value in cfg.consumer.items()})
    return config


class _Partition(_KafkaSourcePartition):
    """Bytewax's Kafka partition reader, reporting its lag as `waxflow_kafka_consumer_lag`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lag = CONSUMER_LAG.labels(self._topic, str(self._part_idx))

    def _process_stats(self, json_stats: str) -> None:
        # Called by librdkafka from within consume(), on the worker's thread.
        try:
            stats = json.loads(json_stats)["topics"][self._topic]["partitions"][str(self._part_idx)]
        except (ValueError, KeyError):
            return
        high = stats.get("hi_offset", -1)
        # Before the first fetch answer, or while the start is still a logical offset
        # (beginning, stored), there is no position to measure from.
        if high >= 0 and self._offset >= 0:
            self._lag.set(max(high - self._offset, 0))


class _Source(KafkaSource):
    """KafkaSource whose partitions report their lag, and whose partition listing does not hand
    consumer settings to the admin client."""

    def list_parts(self) -> list[str]:
        from bytewax.connectors.kafka import _list_parts
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": ",".join(self._brokers)})
        return list(_list_parts(client, self._topics))

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        # As KafkaSource.build_part, with our partition class.
        index, topic = for_part.split("-", 1)
        config = {
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": 1000,
            **self._add_config,
        }
        return _Partition(step_id, config, topic, int(index), self._starting_offset, resume_state,
                          self._batch_size, self._raise_on_errors)


def kafka_source(cfg: Kafka, batch_size: int = 5000) -> KafkaSource:
    return _Source(
        brokers=cfg.brokers,
        topics=[topic_name(cfg)],
        tail=True,
        starting_offset=_STARTS[cfg.start_offset],
        add_config=consumer_config(cfg),
        batch_size=batch_size,
        raise_on_errors=False,  # errors arrive as items; the outlet counts them
    )
