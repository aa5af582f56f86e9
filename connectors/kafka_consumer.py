"""The outlet's Kafka input: Bytewax's KafkaSource on the inlet's topic, one Bytewax partition per
Kafka partition, started from the recovery snapshot when there is one, else from where the
configuration says."""

from __future__ import annotations

from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED

from flows import envelope
from flows.settings import Kafka

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


class _Source(KafkaSource):
    """KafkaSource whose partition listing does not hand consumer settings to the admin client."""

    def list_parts(self) -> list[str]:
        from bytewax.connectors.kafka import _list_parts
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": ",".join(self._brokers)})
        return list(_list_parts(client, self._topics))


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
