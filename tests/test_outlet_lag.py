"""`waxflow_kafka_consumer_lag{topic,partition}`: how far the outlet's reader of a partition is
behind the partition's end, on the real broker, while it reads and while it is held back."""

from __future__ import annotations

import time

from connectors import kafka_consumer
from connectors.kafka_consumer import CONSUMER_LAG, kafka_source
from flows import envelope
from flows.settings import Kafka
from tests.outlet_process import create_topic, produce


def test_lag_is_what_is_left_to_read(broker, topic_name, monkeypatch) -> None:
    monkeypatch.setattr(kafka_consumer, "LAG_INTERVAL", 0.1)
    cfg = Kafka(brokers=[broker.bootstrap], topic=topic_name, start_offset="earliest",
                consumer_group=f"g-{topic_name}")
    topic = envelope.topic_name(topic_name)
    create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, [(b"k", b"x%d" % i) for i in range(200)])
    gauge = CONSUMER_LAG.labels(topic, "0")
    source = kafka_source(cfg, batch_size=10)
    assert source.list_parts() == [f"0-{topic}"]
    part = source.build_part("kafka", f"0-{topic}", None)
    try:
        # A slow reader, 10 messages at a time.
        read, seen = 0, []
        deadline = time.monotonic() + 30
        while read < 200 and time.monotonic() < deadline:
            read += len(part.next_batch())
            seen.append((read, gauge._value.get()))
            time.sleep(0.03)
        assert read == 200
        behind = [value for _, value in seen if value > 0]
        assert len(behind) >= 3, seen
        # each reading is what was left from a position the reader was at, never more than 200
        positions = {0} | {position for position, _ in seen}
        assert all(200 - value in positions for value in behind), seen
        assert behind == sorted(behind, reverse=True)

        def settles_at(value: int) -> bool:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and gauge._value.get() != value:
                time.sleep(0.05)
            return gauge._value.get() == value

        assert settles_at(0)  # caught up
        # Held back (not reading at all, as when the sink waits for ClickHouse): the gauge
        # still grows with what arrives.
        produce(broker.bootstrap, topic, [(b"k", b"y%d" % i) for i in range(25)])
        assert settles_at(25)
        assert sum(len(part.next_batch()) for _ in range(3)) == 25
        assert settles_at(0)
    finally:
        part.close()
