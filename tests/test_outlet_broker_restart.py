"""The local broker (tansu, in memory) restarted under a running outlet: the topic comes back
empty, its offsets start again at 0, below where the outlet was reading. The outlet must see that
the offsets went backwards, count it, and read the new messages from the start instead of
waiting for offsets that will take hours to come back (or skipping what is below them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.broker import LocalBroker
from flows import envelope
from tests.conftest import free_port
from tests.outlet_process import Outlet, create_topic, expected_v5_flows, produce, v5_messages, write_config

pytestmark = pytest.mark.slow
EXPORTERS = ["192.0.2.1", "192.0.2.2"]


def test_offsets_that_went_backwards_are_detected_and_read_from_the_start(tmp_path: Path) -> None:
    broker = LocalBroker("127.0.0.1", free_port(), tmp_path / "broker")
    broker.start()
    topic = "restart"
    kafka_topic = envelope.topic_name(topic)
    api_port = free_port()
    outlet = Outlet(write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic, api_port=api_port,
                                 batch_wait="300ms"), api_port)
    try:
        create_topic(broker.bootstrap, kafka_topic, 2)
        outlet.start()
        sent = produce(broker.bootstrap, kafka_topic, v5_messages(range(0, 100), EXPORTERS))
        outlet.wait_idle(sent)
        assert outlet.value("waxflow_clickhouse_rows_total") == 1000

        broker.stop()  # everything it held is gone with it
        broker.start()
        create_topic(broker.bootstrap, kafka_topic, 2)
        sent += produce(broker.bootstrap, kafka_topic, v5_messages(range(100, 130), EXPORTERS))
        outlet.wait_for(lambda o: o.value("waxflow_clickhouse_rows_total") == 1300, 90,
                        "the messages produced after the restart stored")
        assert outlet.value("waxflow_kafka_offset_resets_total", reason="offsets_went_back") >= 1
        assert outlet.value("waxflow_kafka_consumer_lag") == 0
        outlet.kill()
    finally:
        outlet.stop()
        broker.stop()
    stored = outlet.query("SELECT SrcPort, DstPort FROM waxflow.flows")[0]
    pairs = [(row["SrcPort"], row["DstPort"]) for row in stored]
    assert len(pairs) == len(set(pairs)) == 1300
    assert set(pairs) == expected_v5_flows(range(130))
