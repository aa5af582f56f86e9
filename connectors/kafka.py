"""Kafka through confluent-kafka: topic management and the inlet's producer sink.

(The outlet's consumer side belongs here too, beside these.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from connectors import metrics as metrics_mod
from connectors.metrics import InletMetrics
from connectors.spool import Spool
from flows.envelope import EXPORTER
from flows.ratelimit import RateLimitedLog
from flows.settings import Kafka

log = logging.getLogger(__name__)

Envelopes = list[bytes]   # the sink's items: finished envelopes (flows/envelope.py)


_ratelimited = RateLimitedLog(log)


# --- topic management --------------------------------------------------------------------------

def ensure_topic(kafka: Kafka, topic: str, timeout: float = 15.0) -> list[str]:
    """Create the topic when missing, grow its partitions to the configured count, bring its
    config entries in line. Never shrinks or recreates. Returns what it did, for the log."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics.get(topic)
    if existing is None or existing.error is not None:
        futures = admin.create_topics([NewTopic(topic, kafka.partitions, kafka.replication_factor,
                                                config=dict(kafka.config_entries))],
                                      request_timeout=timeout)
        try:
            futures[topic].result(timeout)
            return [f"created {topic} ({kafka.partitions} partitions, replication "
                    f"{kafka.replication_factor})"]
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            # another process of the cluster created it first: check it like an existing one
    done = []
    have = len(existing.partitions) if existing is not None and existing.error is None else None
    if have is not None and have < kafka.partitions:
        try:
            admin.create_partitions([NewPartitions(topic, kafka.partitions)])[topic].result(timeout)
            done.append(f"grew {topic} from {have} to {kafka.partitions} partitions")
        except KafkaException as err:
            log.warning("kafka: %s has %d partitions, config asks %d; cannot add: %s",
                        topic, have, kafka.partitions, err.args[0].str())
    elif have is not None and have > kafka.partitions:
        log.warning("kafka: %s has %d partitions, config asks %d; partitions are never removed",
                    topic, have, kafka.partitions)
    done += _sync_config(admin, topic, kafka.config_entries, timeout)
    return done


def _sync_config(admin: AdminClient, topic: str, wanted: dict[str, str],
                 timeout: float) -> list[str]:
    if not wanted:
        return []
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        current = admin.describe_configs([resource])[resource].result(timeout)
    except KafkaException as err:
        log.warning("kafka: cannot read the configuration of %s: %s", topic, err.args[0].str())
        return []
    differing = {k: v for k, v in wanted.items()
                 if k not in current or current[k].value != v}
    if not differing:
        return []
    for name, value in differing.items():
        resource.add_incremental_config(_set_entry(name, value))
    try:
        admin.incremental_alter_configs([resource])[resource].result(timeout)
    except KafkaException as err:
        log.warning("kafka: cannot update %s of %s: %s", sorted(differing), topic,
                    err.args[0].str())
        return []
    return [f"set {name}={value} on {topic}" for name, value in sorted(differing.items())]


def _set_entry(name: str, value: str) -> Any:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry
    return ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)


# --- the producer sink ---------------------------------------------------------------------------

PRODUCER_DEFAULTS: dict[str, Any] = {
    # Few large requests: the inlet sends many small messages at high rates.
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 256 * 1024,
    "acks": "all",
}
# Not overridable: acknowledged messages are counted as produced - failed - still queued, so
# librdkafka must report failures only (a report per delivered message costs a Python call
# each, about as much as producing it).
PRODUCER_FIXED: dict[str, Any] = {"delivery.report.only.error": True}


def producer_config(kafka: Kafka, **callbacks: Callable[..., None]) -> dict[str, Any]:
    """Defaults, then the user's `kafka.producer` entries, then the bootstrap and callbacks."""
    return {**PRODUCER_DEFAULTS, **kafka.producer, **PRODUCER_FIXED,
            "bootstrap.servers": kafka.bootstrap, **callbacks}


REPLAY_CHUNK = 5000  # spooled messages handed to the producer at once, then waited for
REPLAY_BELOW = 0.5  # ... once the producer queue is under this fraction of its message bound


class ProducerPartition(StatelessSinkPartition[Envelopes]):
    """One producer per worker. Items are lists of envelopes; the key is each envelope's
    exporter address (`kafka.key_mode: by-exporter`) or none (librdkafka spreads them).

    With `kafka.queue_full: spool`, what the producer cannot take (its queue full while Kafka is
    slow or away) and what failed delivery go to an on-disk spool (connectors/spool.py); while
    the spool holds anything, new envelopes go behind them there, so they reach Kafka in the
    order they came. A replay thread hands the spool's head to the producer once its queue has
    room, waits until every one of them was acknowledged or failed (a failure goes back into
    the spool), and only then forgets them: what the broker never acknowledged is not dropped,
    also across an inlet restart.
    """

    def __init__(self, kafka: Kafka, topic: str, worker: str, metrics: InletMetrics,
                 stop: threading.Event, spool_dir: Path | None = None) -> None:
        self.kafka = kafka
        self.topic = topic
        self.worker = worker
        self.metrics = metrics
        self.stop = stop
        self.drop_when_full = kafka.queue_full == "drop"
        self.by_exporter = kafka.key_mode == "by-exporter"
        self.produced = 0
        self.failed = 0
        self.discarded = 0
        self._reported = (0, 0)
        self._lock = threading.Lock()   # callbacks run in the poller and the worker threads
        self.producer = Producer(producer_config(kafka, on_delivery=self._delivered,
                                                 error_cb=self._error))
        self._closing = threading.Event()
        self._chunk_kept = False
        self.spool = (Spool(spool_dir, int(kafka.spool_max_bytes))
                      if kafka.queue_full == "spool" and spool_dir is not None else None)
        self._queue_bound = int(PRODUCER_DEFAULTS["queue.buffering.max.messages"]
                                if "queue.buffering.max.messages" not in kafka.producer
                                else kafka.producer["queue.buffering.max.messages"])
        # Serves failure reports while the dataflow is idle, so counts never go stale.
        self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                        name=f"kafka-poll-{worker}")
        self._poller.start()
        self._replayer = None
        if self.spool is not None:
            if self.spool.messages:
                log.warning("kafka: worker %s has %d messages spooled by an earlier run; replaying them "
                            "before anything new", worker, self.spool.messages)
            self._replayer = threading.Thread(target=self._replay_loop, daemon=True,
                                              name=f"kafka-replay-{worker}")
            self._replayer.start()

    @property
    def acked(self) -> int:
        """Delivered messages: with failure-only reports, those neither failed nor still in
        librdkafka's queue. A failed message stays counted in the queue until its report has
        run (and counted it) and the lock keeps that report from running between the reads."""
        with self._lock:
            return self.produced - self.failed - len(self.producer)

    # -- callbacks (librdkafka reports through poll/flush) --
    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:   # only with a non-default delivery.report.only.error
            return
        with self._lock:
            self.failed += 1
        self.metrics.kafka_failed.labels(self.worker, err.name()).inc()
        if self._chunk_kept:
            return  # a message of the replay chunk still at the spool's head
        if self.spool is not None and msg is not None and msg.value() is not None:
            self._to_spool([msg.value()], "delivery_failed")
            _ratelimited(logging.WARNING, "delivery", "kafka: delivery failed (%s); spooled for a retry",
                         err.str())
            return
        _ratelimited(logging.ERROR, "delivery", "kafka: delivery failed: %s", err.str())

    def _to_spool(self, values: list[bytes], reason: str) -> None:
        kept = self.spool.append(values)
        if kept:
            self.metrics.kafka_spooled.labels(self.worker, reason).inc(kept)
        for _ in range(len(values) - kept):
            self._discard("spool_full")
        self.metrics.spool_bytes.labels(self.worker).set(self.spool.bytes)

    def _error(self, err: KafkaError) -> None:
        _ratelimited(logging.WARNING, f"error-{err.code()}", "kafka: %s", err.str())

    def _poll_loop(self) -> None:
        while not self._closing.is_set():
            self.producer.poll(0.2)
            self._report()

    def _report(self) -> None:
        with self._lock:
            produced = self.produced
        acked = self.acked
        last_acked, last_produced = self._reported
        self._reported = (max(acked, last_acked), produced)
        if acked > last_acked:
            self.metrics.kafka_acked.labels(self.worker).inc(acked - last_acked)
        if produced > last_produced:
            self.metrics.kafka_produced.labels(self.worker).inc(produced - last_produced)
        self.metrics.kafka_queued.labels(self.worker).set(len(self.producer))

    # -- the hot path --
    def write_batch(self, items: list[Envelopes]) -> None:
        produce = self.producer.produce
        topic, keyed, key = self.topic, self.by_exporter, None
        produced = 0
        spool = self.spool
        for index, envelopes in enumerate(items):
            if spool is not None and spool.messages:  # spooling: behind what waits there
                self._to_spool([bytes(v) for batch in items[index:] for v in batch], "behind_spool")
                break
            for position, value in enumerate(envelopes):
                if keyed:
                    key = value[EXPORTER]
                try:
                    produce(topic, value, key)
                except BufferError:
                    if spool is not None:
                        self._to_spool([bytes(v) for v in envelopes[position:]], "queue_full")
                        _ratelimited(logging.WARNING, "queue-full", "kafka: producer queue full on worker "
                                     "%s; spooling to disk until Kafka takes messages again", self.worker)
                        break
                    if not self._wait_for_room(key, value):
                        continue
                produced += 1
        with self._lock:
            self.produced += produced

    def _replay_loop(self) -> None:
        """Hand the spool's head to the producer whenever its queue has room; forget a chunk
        once the producer holds none of it (each acknowledged, or failed and spooled again)."""
        spool = self.spool
        while not self._closing.is_set():
            if not spool.messages or len(self.producer) > self._queue_bound * REPLAY_BELOW:
                self._closing.wait(0.1)
                continue
            values, position, size = spool.peek(REPLAY_CHUNK)
            if not values:
                self._closing.wait(0.1)
                continue
            failed_before = self.failed
            for value in values:
                key = value[EXPORTER] if self.by_exporter else None
                while not self._closing.is_set():
                    try:
                        self.producer.produce(self.topic, value, key)
                        with self._lock:
                            self.produced += 1
                        break
                    except BufferError:
                        self.producer.poll(0.05)
            while len(self.producer) and not self._closing.is_set():
                self.producer.flush(0.5)
            if self._closing.is_set():
                # Stopping mid-chunk: it stays at the spool's head for the next start, so what
                # close() purges from the producer (all of it from this chunk: nothing goes
                # direct while the spool holds anything) is not spooled a second time.
                self._chunk_kept = True
                return
            spool.advance(position, len(values), size)
            failed = min(self.failed - failed_before, len(values))
            self.metrics.kafka_replayed.labels(self.worker).inc(len(values) - failed)
            self.metrics.spool_bytes.labels(self.worker).set(spool.bytes)

    def _wait_for_room(self, key: bytes | None, value: bytes) -> bool:
        """The local queue is full: drop (counted) or block until deliveries make room.
        Blocking stops this worker reading its sockets: back-pressure into the kernel buffer,
        where overflow shows as kernel drops. Returns whether the message was queued."""
        if self.drop_when_full:
            self._discard("queue_full")
            return False
        _ratelimited(logging.WARNING, "queue-full", "kafka: producer queue full on worker %s; "
                     "blocking (kafka.queue_full: block)", self.worker)
        deadline = None
        while True:
            self.producer.poll(0.05)
            try:
                self.producer.produce(self.topic, value, key)
                return True
            except BufferError:
                pass
            if self.stop.is_set():  # stopping with Kafka away: bounded by flush_timeout
                deadline = deadline or time.monotonic() + self.kafka.flush_timeout.total_seconds()
                if time.monotonic() > deadline:
                    self._discard("shutdown")
                    return False

    def _discard(self, reason: str) -> None:
        self.discarded += 1
        self.metrics.kafka_discarded.labels(self.worker, reason).inc()

    def close(self) -> None:
        """End of the dataflow (a clean stop): wait for what is queued to be acknowledged; with
        a spool, what Kafka has still not taken is spooled for the next start."""
        self._closing.set()
        self._poller.join()
        if self._replayer is not None:
            self._replayer.join()
        remaining = self.producer.flush(self.kafka.flush_timeout.total_seconds())
        if remaining and self.spool is not None:
            # Not yet sent: reported as purged, spooled by the delivery callback. Those in
            # flight are left to their fate (they may have been stored).
            self.producer.purge(in_queue=True, in_flight=False, blocking=True)
            self.producer.flush(1.0)
            remaining = len(self.producer)
        if self.spool is not None:
            self.spool.close()
        self._report()
        log.info("kafka: worker %s produced %d, acked %d, failed %d, discarded %d, "
                 "unacknowledged after flush %d", self.worker, self.produced, self.acked,
                 self.failed, self.discarded, remaining)


class ProducerSink(DynamicSink[Envelopes]):
    """Produces lists of envelopes to `topic`; ensures the topic first when managed."""

    def __init__(self, kafka: Kafka, topic: str, stop: threading.Event | None = None,
                 spool_dir: Path | None = None) -> None:
        self.kafka = kafka
        self.topic = topic
        self.stop = stop or threading.Event()
        self.spool_dir = spool_dir

    def build(self, step_id: str, worker_index: int, worker_count: int) -> ProducerPartition:
        if self.kafka.manage_topic:
            _ensure_once(self.kafka, self.topic)
        # worker_index counts across the cluster's processes: one spool per worker everywhere.
        spool = self.spool_dir / f"worker-{worker_index}" if self.spool_dir is not None else None
        return ProducerPartition(self.kafka, self.topic, str(worker_index),
                                 metrics_mod.inlet_metrics(), self.stop, spool)


_ensured: set[str] = set()
_ensure_lock = threading.Lock()


def _ensure_once(kafka: Kafka, topic: str) -> None:
    """Once per process; a broker away at startup is logged, not fatal (the producer retries)."""
    with _ensure_lock:
        if topic in _ensured:
            return
        try:
            for line in ensure_topic(kafka, topic):
                log.info("kafka: %s", line)
        except KafkaException as err:
            log.error("kafka: cannot manage topic %s: %s", topic, err.args[0].str())
            return
        _ensured.add(topic)
