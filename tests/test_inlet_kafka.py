"""The inlet's Kafka side: topic management, producer queue-full behaviour, message keys."""

from __future__ import annotations

import threading

from confluent_kafka.admin import AdminClient, ConfigResource
from prometheus_client import CollectorRegistry

from connectors.metrics import RateLimitedLog
from connectors import kafka as kafka_mod
from connectors.broker import LocalBroker
from connectors.metrics import InletMetrics
from connectors.udp import Datagram, ReceivedBatch
from flows import envelope
from flows.inlet import wrap
from flows.settings import Kafka
from tests.conftest import free_port


def partitions_of(bootstrap: str, topic: str) -> int | None:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics.get(topic)
    return None if meta is None or meta.error else len(meta.partitions)


def test_ensure_topic_creates_then_leaves_alone(broker: LocalBroker, topic_name: str) -> None:
    cfg = Kafka(brokers=[broker.bootstrap], topic=topic_name, partitions=3)
    topic = envelope.topic_name(topic_name)
    done = kafka_mod.ensure_topic(cfg, topic)
    assert done == [f"created {topic} (3 partitions, replication 1)"]
    assert partitions_of(broker.bootstrap, topic) == 3
    # Asking for fewer partitions never shrinks; a second run creates nothing.
    smaller = cfg.model_copy(update={"partitions": 1})
    assert not any("created" in line for line in kafka_mod.ensure_topic(smaller, topic))
    assert partitions_of(broker.bootstrap, topic) == 3


def test_ensure_topic_updates_differing_config_entries(broker: LocalBroker,
                                                       topic_name: str) -> None:
    topic = envelope.topic_name(topic_name)
    cfg = Kafka(brokers=[broker.bootstrap], topic=topic_name, partitions=1,
                config_entries={"retention.ms": "3600000"})
    kafka_mod.ensure_topic(cfg, topic)
    changed = cfg.model_copy(update={"config_entries": {"retention.ms": "7200000"}})
    done = kafka_mod.ensure_topic(changed, topic)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        current = admin.describe_configs([resource])[resource].result(10)
    except Exception:
        current = None
    if current is not None and "retention.ms" in current:
        assert current["retention.ms"].value == "7200000", done
    # Whatever the broker supports, the function never raises for config drift.
    assert partitions_of(broker.bootstrap, topic) == 1


def test_unmanaged_topic_is_not_created(broker: LocalBroker, topic_name: str) -> None:
    cfg = Kafka(brokers=[broker.bootstrap], topic=topic_name, manage_topic=False)
    part = kafka_mod.ProducerSink(cfg, envelope.topic_name(topic_name)).build("produce", 0, 1)
    part.close()
    assert partitions_of(broker.bootstrap, envelope.topic_name(topic_name)) is None


def _unreachable(**extra: object) -> Kafka:
    return Kafka(brokers=[f"127.0.0.1:{free_port()}"], manage_topic=False,
                 producer={"queue.buffering.max.messages": 10, "linger.ms": 0,
                           "message.timeout.ms": 2000}, **extra)


def test_queue_full_drop_is_counted() -> None:
    metrics = InletMetrics(CollectorRegistry())
    part = kafka_mod.ProducerPartition(_unreachable(queue_full="drop", flush_timeout=0.5),
                                       "t-v1", "0", metrics, threading.Event())
    part.write_batch([[(None, b"v%d" % i) for i in range(25)]])
    assert part.produced == 10 and part.discarded == 15
    assert metrics.kafka_discarded.labels("0", "queue_full")._value.get() == 15
    part.close()


def test_queue_full_block_waits_and_gives_up_only_when_stopping() -> None:
    """Blocking is back-pressure; on a stop with Kafka away it ends after flush_timeout."""
    metrics = InletMetrics(CollectorRegistry())
    stop = threading.Event()
    part = kafka_mod.ProducerPartition(_unreachable(queue_full="block", flush_timeout=3),
                                       "t-v1", "0", metrics, stop)
    finished = threading.Event()

    def write() -> None:
        part.write_batch([[(None, b"v%d" % i) for i in range(12)]])
        finished.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not finished.wait(0.5)           # blocked: the queue holds 10
    stop.set()
    assert finished.wait(10)
    writer.join()
    assert part.produced + part.discarded == 12 and part.produced >= 10
    part.close()
    # The unreachable broker fails what was queued: counted, not silent.
    assert part.failed == part.produced


def test_wrap_keys_by_exporter_or_random() -> None:
    exporter = envelope.address_bytes("203.0.113.5")
    batch = ReceivedBatch(2, 2, [Datagram(b"one", exporter, 6343, 5), Datagram(b"two", exporter,
                                                                              6343, 6)])
    keyed = wrap(True, batch)
    assert [k for k, _ in keyed] == [exporter, exporter]
    assert [envelope.decode(v).payload for _, v in keyed] == [b"one", b"two"]
    assert envelope.decode(keyed[0][1]).decoder == "sflow"
    assert [k for k, _ in wrap(False, batch)] == [None, None]


def test_producer_settings_from_config_win_over_defaults() -> None:
    cfg = Kafka(producer={"linger.ms": 50, "compression.type": "zstd"})
    merged = kafka_mod.producer_config(cfg)
    assert merged["linger.ms"] == 50 and merged["compression.type"] == "zstd"
    assert kafka_mod.producer_config(Kafka())["compression.type"] == "lz4"


def test_ratelimited_log_suppresses_repeats(caplog) -> None:
    import logging
    limited = RateLimitedLog(logging.getLogger("t"), interval=60)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            limited(logging.WARNING, "k", "same %s", "thing")
    assert [r.getMessage() for r in caplog.records] == ["same thing"]
    assert limited.suppressed["k"] == 4
