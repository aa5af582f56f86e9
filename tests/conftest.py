"""Shared fixtures: a real tansu broker on a free loopback port and a chDB store in a temp dir."""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError

from connectors import clickhouse
from connectors.broker import LocalBroker
from flows.settings import ClickHouse

# Ports handed to services are drawn below the kernel's ephemeral range, so the outgoing
# connections of Kafka clients and the like cannot take them between the check and the bind.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 (for `kind`) that this session has not handed out before."""
    while True:
        port = random.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One broker for the test session (tansu keeps topics in memory; tests use unique topics)."""
    local = LocalBroker("127.0.0.1", free_port(), tmp_path_factory.mktemp("broker"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def topic_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB allows one data directory per process: every test in this process shares it."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store(chdb_dir: Path) -> Iterator[ClickHouse]:
    """A ClickHouse config on the session's chDB directory with a database of its own."""
    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"t_{uuid.uuid4().hex[:10]}")
    yield cfg
    clickhouse.connect(cfg).command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


@pytest.fixture
def snmp_agent(tmp_path: Path):
    """A real Debian snmpd on a loopback port with fixed interface names (tests/snmpd.py)."""
    from tests.snmpd import running_agent

    yield from running_agent(tmp_path)


def consume_messages(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0):
    """(key, value) of every message, reading each partition to its EOF."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True,
                         "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    out, eof, deadline = [], set(), time.monotonic() + timeout
    try:
        while len(eof) < partitions and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                raise AssertionError(msg.error())
            out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    assert len(eof) == partitions, "did not reach the end of every partition"
    return out
