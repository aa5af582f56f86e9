"""The local broker: real tansu, produce/consume with confluent-kafka, start/stop/port errors."""

from __future__ import annotations

import socket

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.broker import BrokerError, LocalBroker, answers
from tests.conftest import consume_messages, free_port


def test_produce_and_consume(broker: LocalBroker, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic_name, 2, 1)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "lz4"})
    sent = [f"message {i}".encode() for i in range(200)]
    for i, value in enumerate(sent):
        producer.produce(topic_name, key=str(i % 7).encode(), value=value)
    assert producer.flush(15) == 0
    assert sorted(v for _k, v in consume_messages(broker.bootstrap, topic_name, 2)) == sorted(sent)


def test_start_refuses_a_taken_port(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        local = LocalBroker("127.0.0.1", port, tmp_path)
        with pytest.raises(BrokerError, match=f"port {port} .* is taken"):
            local.start()
    assert local.pid() is None


def test_start_status_stop(tmp_path) -> None:
    local = LocalBroker("127.0.0.1", free_port(), tmp_path)
    pid = local.start()
    try:
        assert local.status() == {"bootstrap": local.bootstrap, "pid": pid, "running": True, "answering": True}
        assert local.start() == pid  # starting twice finds the running broker
    finally:
        assert local.stop()
    assert not answers(local.bootstrap, timeout=0.5)
    assert local.status()["running"] is False
    assert local.stop() is False
