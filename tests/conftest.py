"""Shared fixtures: a real tansu broker on a free loopback port and a chDB store in a temp dir."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from connectors import clickhouse
from connectors.broker import LocalBroker
from flows.settings import ClickHouse


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
