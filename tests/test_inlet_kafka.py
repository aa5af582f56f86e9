"""The inlet's Kafka side: topic management, producer queue-full behaviour, message keys."""

from __future__ import annotations

import threading
import time

from confluent_kafka.admin import AdminClient, ConfigResource
from prometheus_client import CollectorRegistry

from connectors import kafka as kafka_mod
from connectors.broker import LocalBroker
from connectors.metrics import InletMetrics
from flows import envelope
from flows.ratelimit import RateLimitedLog
from flows.settings import Kafka
from tests.conftest import consume_messages, free_port


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


def envelopes(count: int, exporter: str = "10.0.0.1") -> list[bytes]:
    return [envelope.encode("netflow", 0, i, exporter, 2055, b"v%d" % i) for i in range(count)]


def _unreachable(**extra: object) -> Kafka:
    return Kafka(brokers=[f"127.0.0.1:{free_port()}"], manage_topic=False,
                 producer={"queue.buffering.max.messages": 10, "linger.ms": 0,
                           "message.timeout.ms": 2000}, **extra)


def test_queue_full_drop_is_counted() -> None:
    metrics = InletMetrics(CollectorRegistry())
    part = kafka_mod.ProducerPartition(_unreachable(queue_full="drop", flush_timeout=0.5),
                                       "t-v1", "0", metrics, threading.Event())
    part.write_batch([envelopes(25)])
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
        part.write_batch([envelopes(12)])
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


def test_keys_by_exporter_or_none_and_acked_counted(broker: LocalBroker, topic_name: str) -> None:
    """The key is the envelope's exporter address, or none; every message is acknowledged
    (counted from failure-only delivery reports) and arrives unchanged."""
    sent = envelopes(3, "203.0.113.5") + envelopes(2, "2001:db8::7")
    for mode, keys in (("by-exporter", [envelope.address_bytes("203.0.113.5")] * 3
                        + [envelope.address_bytes("2001:db8::7")] * 2),
                       ("random", [None] * 5)):
        cfg = Kafka(brokers=[broker.bootstrap], topic=f"{topic_name}-{mode}", partitions=1,
                    key_mode=mode)
        metrics = InletMetrics(CollectorRegistry())
        topic = envelope.topic_name(cfg.topic)
        kafka_mod.ensure_topic(cfg, topic)
        part = kafka_mod.ProducerPartition(cfg, topic, "0", metrics, threading.Event())
        part.write_batch([sent[:2], sent[2:]])
        part.close()
        assert (part.produced, part.acked, part.failed) == (5, 5, 0)
        assert metrics.kafka_acked.labels("0")._value.get() == 5
        assert consume_messages(broker.bootstrap, topic, 1) == list(zip(keys, sent)), mode


def test_what_kafka_does_not_take_is_spooled_and_replayed_once_it_does(
        broker: LocalBroker, topic_name: str, tmp_path) -> None:
    """Kafka away: the producer queue (10) fills, the rest goes to the spool, and what was
    queued fails delivery after message.timeout.ms and is spooled too; a stop keeps the spool.
    The next start, with Kafka there, replays every message once; the spool ends empty."""
    spool = tmp_path / "spool"
    metrics = InletMetrics(CollectorRegistry())
    away = _unreachable(queue_full="spool", flush_timeout=0.5)
    sent = envelopes(25)
    part = kafka_mod.ProducerPartition(away, "t-v1", "0", metrics, threading.Event(), spool)
    part.write_batch([sent[:20], sent[20:]])
    assert metrics.kafka_spooled.labels("0", "queue_full")._value.get() == 10
    assert metrics.kafka_spooled.labels("0", "behind_spool")._value.get() == 5
    part.write_batch([envelopes(2, "192.0.2.99")])  # behind the spool, not in the queue
    part.close()
    assert part.spool.messages == 27 and part.discarded == 0  # the 10 failed ones spooled as well

    cfg = Kafka(brokers=[broker.bootstrap], topic=topic_name, partitions=1, queue_full="spool")
    topic = envelope.topic_name(cfg.topic)
    kafka_mod.ensure_topic(cfg, topic)
    again = kafka_mod.ProducerPartition(cfg, topic, "0", InletMetrics(CollectorRegistry()),
                                        threading.Event(), spool)
    deadline = time.monotonic() + 30
    while again.spool.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    again.close()
    assert again.spool.messages == 0
    received = [value for _, value in consume_messages(broker.bootstrap, topic, 1)]
    assert sorted(received) == sorted(sent + envelopes(2, "192.0.2.99"))
    # the queue-full ones and those behind them kept their order
    assert [v for v in received if v in sent[10:]] == sent[10:]


def test_producer_settings_from_config_win_over_defaults() -> None:
    cfg = Kafka(producer={"linger.ms": 50, "compression.type": "zstd"})
    merged = kafka_mod.producer_config(cfg)
    assert merged["linger.ms"] == 50 and merged["compression.type"] == "zstd"
    assert kafka_mod.producer_config(Kafka())["compression.type"] == "lz4"
    # acked is counted from failure-only reports: a user setting cannot turn that off
    forced = kafka_mod.producer_config(Kafka(producer={"delivery.report.only.error": False}))
    assert forced["delivery.report.only.error"] is True


def test_ratelimited_log_suppresses_repeats(caplog) -> None:
    import logging
    limited = RateLimitedLog(logging.getLogger("t"), interval=60)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            limited(logging.WARNING, "k", "same %s", "thing")
    assert [r.getMessage() for r in caplog.records] == ["same thing"]
    assert limited.suppressed["k"] == 4


def test_a_stop_during_a_replay_keeps_its_chunk_once(tmp_path) -> None:
    """Stopping while spooled messages are being replayed to a Kafka that is away: the chunk
    stays at the spool's head, and what the producer still held is not spooled a second time."""
    from connectors.spool import Spool

    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.append(envelopes(30))
    spool.close()
    part = kafka_mod.ProducerPartition(_unreachable(queue_full="spool", flush_timeout=0.5), "t-v1", "0",
                                       InletMetrics(CollectorRegistry()), threading.Event(), tmp_path / "spool")
    deadline = time.monotonic() + 10
    while len(part.producer) < 10 and time.monotonic() < deadline:  # the replay filled the queue
        time.sleep(0.05)
    part.close()
    assert Spool(tmp_path / "spool", 1 << 20).peek(100)[0] == envelopes(30)
