"""The outlet's Kafka input: Bytewax's KafkaSource on the inlet's topic, one Bytewax partition per
Kafka partition, started from the recovery snapshot when there is one, else from where the
configuration says."""

from __future__ import annotations

import logging
import threading
import time
import weakref

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage, _KafkaSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge

from connectors.cluster import recovery_enabled
from flows import delivery, envelope
from flows.ratelimit import RateLimitedLog
from flows.settings import Kafka

CONSUMER_LAG = Gauge(
    "waxflow_kafka_consumer_lag",
    "messages in the partition not yet read by the outlet: the partition's high watermark (as "
    "the broker's fetch responses last said) minus the next offset the dataflow reads",
    ["topic", "partition"])
LAG_INTERVAL = 1.0
OFFSET_RESETS = Counter(
    "waxflow_kafka_offset_resets_total",
    "times the outlet's read position was moved to the partition's earliest offset, by reason "
    "(offsets_went_back: the partition now ends below the position, e.g. a broker that lost its "
    "data and started again from 0)", ["reason"])
CHECK_INTERVAL = 1.0  # seconds between two looks at a partition's watermarks (two agree: a reset)

_STARTS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END, "committed": OFFSET_STORED}


def topic_name(cfg: Kafka) -> str:
    """The topic carries the envelope version, so old and new formats never mix."""
    return envelope.topic_name(cfg.topic)


def consumer_config(cfg: Kafka) -> dict[str, str]:
    """librdkafka settings for the outlet's consumers.

    A recovery snapshot, when present, decides the start offset. Without recovery, `committed`
    resumes from the group's committed offsets (earliest when it has none); they are committed
    as messages are read, and a crash may skip what was read but not yet inserted. With
    recovery (`-r`) the committed offsets are never a start position (see `start_offset`).
    """
    auto = cfg.start_offset == "committed" and not recovery_enabled()
    config = {
        "group.id": cfg.consumer_group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "true" if auto else "false",
        "fetch.max.bytes": str(64 * 1024 * 1024),
        "queued.max.messages.kbytes": str(256 * 1024),
    }
    config.update({key: str(value) for key, value in cfg.consumer.items()})
    return config


def start_offset(configured: int, resumed: int | None, recovery: bool) -> int:
    """Where a partition starts without a snapshot offset (`resumed` None): the configured start,
    but with recovery `committed` reads from the earliest offset.

    With recovery the group's offset is committed when the source takes its snapshot, before
    Bytewax has made that snapshot durable (the sink's snapshot, holding rows read but not yet
    inserted, is written after). A process killed in between, before its first durable snapshot,
    finds no snapshot at the next start, and the committed offset would skip those rows: whole
    datagrams lost. Reading from the earliest offset instead is exact, as the sink's marks drop
    every row already stored (flows/delivery.py); it costs a re-read of what the topic retains.
    """
    if resumed is not None or not recovery or configured != OFFSET_STORED:
        return configured
    return OFFSET_BEGINNING


log = logging.getLogger(__name__)
_ratelimited_commit = RateLimitedLog(log)


class _Partition(_KafkaSourcePartition):
    """Bytewax's Kafka partition reader, whose lag `_LagReporter` reports, and which notices
    when the partition's offsets went backwards under it.

    A broker that lost its data (the local broker keeps everything in memory) comes back with
    the partition starting again at 0, below the position this reader resumes from or had
    reached; it would wait there, reading nothing, until new messages passed that position, and
    then skip everything below it. Policy: such a partition is read again from its earliest
    offset, and the reset is counted and logged (what the broker lost cannot be read again).

    Each reset starts a new *generation* of the partition's offsets, carried in the high bits of
    the messages' partition number (flows/delivery.py: the origin of each row), so the sink
    does not take the new offsets for a replay of the old ones. The generation is in the
    snapshot, and committed with the offset (its metadata) for a start without a snapshot.
    """

    def __init__(self, step_id: str, config: dict, topic: str, part_idx: int, starting_offset: int,
                 resume_state: tuple[int, int] | int | None, batch_size: int, raise_on_errors: bool) -> None:
        offset, generation = resume_state if isinstance(resume_state, tuple) else (resume_state, None)
        starting_offset = start_offset(starting_offset, offset, recovery_enabled())
        super().__init__(step_id, config, topic, part_idx, starting_offset, offset, batch_size, raise_on_errors)
        self._generation = generation if generation is not None else self._committed_generation()
        self._lag = CONSUMER_LAG.labels(self._topic, str(self._part_idx))
        self._closed = False
        self._checked_at = time.monotonic()
        self._behind = False
        _LagReporter.watch(self)

    def _committed_generation(self) -> int:
        try:
            (committed,) = self._consumer.committed([TopicPartition(self._topic, self._part_idx)], timeout=5)
            return int(committed.metadata or 0)
        except (KafkaException, RuntimeError, ValueError, TypeError):
            return 0

    def next_batch(self) -> list:
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL:
            self._checked_at = now
            self._check_offsets()
        batch = super().next_batch()
        if not self._generation:
            return batch
        # After a reset: the generation rides in the partition number (rare; a copy per message).
        tagged = self._part_idx | (self._generation << delivery.GENERATION_SHIFT)
        return [m if isinstance(m, KafkaError) else
                KafkaSourceMessage(key=m.key, value=m.value, topic=m.topic, offset=m.offset, partition=tagged)
                for m in batch]

    def _check_offsets(self) -> None:
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._part_idx), cached=True)
        except (KafkaException, RuntimeError):
            return
        position = self._offset
        behind = high is not None and high >= 0 and position >= 0 and high < position
        # Twice in a row (a second apart): a watermark read once from a lagging replica while a
        # partition moves between brokers must not make the outlet read everything again.
        seen_before, self._behind = self._behind, behind
        if not (behind and seen_before):
            return
        self._behind = False
        OFFSET_RESETS.labels("offsets_went_back").inc()
        self._generation = min(self._generation + 1, delivery.MAX_GENERATION)
        log.warning("kafka: %s[%d] now ends at offset %d, below the position %d: the broker lost "
                    "messages (restarted without its data?); reading it again from its earliest offset "
                    "(offset generation %d)", self._topic, self._part_idx, high, position, self._generation)
        self._consumer.assign([TopicPartition(self._topic, self._part_idx, OFFSET_BEGINNING)])
        self._offset = OFFSET_BEGINNING

    def snapshot(self) -> tuple[int, int]:
        # Called at each epoch's end, only with recovery: the group's offset follows the
        # snapshots, for lag tools; not durable with them, so never a start (start_offset).
        if self._offset >= 0:
            try:
                self._consumer.commit(offsets=[TopicPartition(self._topic, self._part_idx, self._offset,
                                                              metadata=str(self._generation))],
                                      asynchronous=True)
            except (KafkaException, RuntimeError) as err:
                _ratelimited_commit(logging.WARNING, "commit", "kafka: committing offset %d of %s[%d] "
                                    "failed: %s", self._offset, self._topic, self._part_idx, err)
        return self._offset, self._generation

    def _process_stats(self, json_stats: str) -> None:
        """Bytewax's own statistics handling is not used (statistics are off)."""

    def report_lag(self) -> None:
        if self._closed:
            return
        try:
            # cached: the high watermark of the last fetch response, no request to the broker
            # (tansu answers the "latest offset" request wrongly; its fetch responses are right).
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._part_idx), cached=True)
        except (KafkaException, RuntimeError):  # closing, or not fetched yet
            return
        position = self._offset
        # Before the first fetch answer, or while the start is still a logical offset
        # (beginning, stored), there is no position to measure from.
        if high is not None and high >= 0 and position >= 0:
            self._lag.set(max(high - position, 0))

    def close(self) -> None:
        self._closed = True
        super().close()


class _LagReporter:
    """One thread per process sets every partition's lag gauge each LAG_INTERVAL seconds.

    It runs beside the workers, not from within their Kafka polls: when the sink holds the
    worker back (ClickHouse refusing inserts), librdkafka keeps fetching and the lag keeps
    growing on the gauge, which is when it matters.
    """

    _parts: weakref.WeakSet[_Partition] = weakref.WeakSet()
    _thread: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def watch(cls, part: _Partition) -> None:
        with cls._lock:
            cls._parts.add(part)
            if cls._thread is None:
                cls._thread = threading.Thread(target=cls._run, name="kafka-lag", daemon=True)
                cls._thread.start()

    @classmethod
    def _run(cls) -> None:
        while True:
            with cls._lock:
                parts = list(cls._parts)
            for part in parts:
                part.report_lag()
            time.sleep(LAG_INTERVAL)


class _Source(KafkaSource):
    """KafkaSource whose partitions report their lag, and whose partition listing does not hand
    consumer settings to the admin client."""

    def list_parts(self) -> list[str]:
        from bytewax.connectors.kafka import _list_parts
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": ",".join(self._brokers)})
        return list(_list_parts(client, self._topics))

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | int | None) -> _Partition:
        # As KafkaSource.build_part, with our partition class.
        index, topic = for_part.split("-", 1)
        config = {
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
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
