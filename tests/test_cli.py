"""The `waxflow` command as users run it: a subprocess in a working directory of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def waxflow(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "waxflow", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kafka: {partitions: -3}\n")
    result = waxflow(tmp_path, "--config", "bad.yaml", "config", "check")
    assert result.returncode != 0
    assert "kafka.partitions" in result.stderr
    assert "greater than or equal to 1" in result.stderr


def test_config_check_dump_shows_resolved_values(tmp_path: Path) -> None:
    (tmp_path / "dataflows.yaml").write_text("kafka: {partitions: 12}\n")
    import os
    env = {**os.environ, "WAXFLOW__CLICKHOUSE__TTL__FLOWS": "2d"}
    result = waxflow(tmp_path, "config", "check", "--dump", env=env)
    assert result.returncode == 0, result.stderr
    dumped = json.loads(result.stdout)
    assert dumped["kafka"]["partitions"] == 12
    assert dumped["clickhouse"]["ttl"]["flows"] == "2d"
    assert dumped["inlet"]["listeners"][2] == {
        "name": "sflow", "address": "0.0.0.0", "port": 6343, "decoder": "sflow",
        "receive_buffer": "32.0MiB", "timestamp_source": "kernel", "decapsulation": "none"}


def test_migrate_on_empty_chdb_directory_then_nothing(tmp_path: Path) -> None:
    first = waxflow(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    for table in ("flows", "flows_1m0s", "flows_5m0s", "flows_1h0m0s", "exporters"):
        assert f"applied: create table {table}\n" in first.stdout
    assert (tmp_path / "data" / "clickhouse").is_dir()
    second = waxflow(tmp_path, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "waxflow: up to date, nothing to do"


def test_broker_commands(tmp_path: Path) -> None:
    port = str(free_port())
    started = waxflow(tmp_path, "broker", "start", "--port", port)
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout
        status = waxflow(tmp_path, "broker", "status", "--port", port)
        assert status.returncode == 0
        assert json.loads(status.stdout)["answering"] is True
    finally:
        stopped = waxflow(tmp_path, "broker", "stop", "--port", port)
    assert stopped.stdout.strip() == "broker stopped"
    assert waxflow(tmp_path, "broker", "status", "--port", port).returncode == 1
