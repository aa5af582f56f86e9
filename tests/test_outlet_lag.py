"""`waxflow_kafka_consumer_lag{topic,partition}`: how far the outlet's reader of a partition is
behind the partition's end, from librdkafka's statistics, on the real broker."""

from __future__ import annotations

import time

from connectors.kafka_consumer import CONSUMER_LAG, kafka_source
from flows import envelope
from flows.settings import Kafka
from tests.outlet_process import create_topic, produce


def test_lag_is_what_is_left_to_read(broker, topic_name) -> None:
    cfg = Kafka(brokers=[broker.bootstrap], topic=topic_name, start_offset="earliest",
                consumer_group=f"g-{topic_name}", consumer={"statistics.interval.ms": 200})
    topic = envelope.topic_name(topic_name)
    create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, [(b"k", b"x%d" % i) for i in range(200)])
    gauge = CONSUMER_LAG.labels(topic, "0")
    source = kafka_source(cfg, batch_size=10)
    assert source.list_parts() == [f"0-{topic}"]
    part = source.build_part("kafka", f"0-{topic}", None)
    try:
        # A slow reader: statistics arrive within consume(), before the batch it returns.
        read, seen = 0, []
        deadline = time.monotonic() + 30
        while read < 200 and time.monotonic() < deadline:
            before = read
            read += len(part.next_batch())
            seen.append((before, gauge._value.get()))
            time.sleep(0.05)
        assert read == 200
        behind = [(position, value) for position, value in seen if value > 0]
        assert len(behind) >= 3, seen
        # each reading is the messages left from a position the reader was at
        positions = {position for position, _ in seen}
        assert all(200 - value in positions for _, value in behind), behind
        assert [v for _, v in behind] == sorted((v for _, v in behind), reverse=True)
        # caught up: the gauge comes down to 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and gauge._value.get() != 0:
            assert part.next_batch() == []
            time.sleep(0.05)
        assert gauge._value.get() == 0
    finally:
        part.close()
