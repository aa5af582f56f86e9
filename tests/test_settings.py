"""Configuration: the shipped file loads, bad values name their key, the environment wins."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from flows.settings import ConfigError, format_duration, load_settings, parse_duration

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataflows.yaml"
    path.write_text(text)
    return path


def test_shipped_file_loads_with_expected_listeners() -> None:
    settings = load_settings(ROOT / "dataflows.yaml")
    ports = {(lst.name, lst.port, lst.decoder) for lst in settings.inlet.listeners}
    assert ports == {("netflow", 2055, "netflow"), ("ipfix", 4739, "netflow"), ("sflow", 6343, "sflow")}
    assert settings.clickhouse.embedded
    assert settings.clickhouse.ttl.flows == timedelta(days=15)
    assert settings.kafka.key_mode == "by-exporter"


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert [lst.port for lst in settings.inlet.listeners] == [2055, 4739, 6343]
    assert settings.clickhouse.dsn == f"chdb://{tmp_path.resolve()}/data/clickhouse"
    assert settings.clickhouse.batch_rows == 50_000


def test_config_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "kafka: {partitions: 9}\n")
    monkeypatch.setenv("WAXFLOW_CONFIG", str(path))
    assert load_settings().kafka.partitions == 9


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("kafka: {partitions: -3}\n", "kafka.partitions", "greater than or equal to 1"),
        ("kafka: {partitions: many}\n", "kafka.partitions", "valid integer"),
        ("kafka: {partitionz: 3}\n", "kafka.partitionz", "unknown key"),
        ("inlet: {listeners: [{name: a, port: 70000, decoder: netflow}]}\n",
         "inlet.listeners[0].port", "less than or equal to 65535"),
        ("inlet: {listeners: [{name: a, port: 2055, decoder: jflow}]}\n",
         "inlet.listeners[0].decoder", "'netflow' or 'sflow'"),
        ("clickhouse: {dsn: 'ftp://x'}\n", "clickhouse.dsn", "scheme must be chdb"),
        ("clickhouse: {dsn: 'http://:8123'}\n", "clickhouse.dsn", "has no host"),
        ("clickhouse: {ttl: {flows: soon}}\n", "clickhouse.ttl.flows", "not a duration"),
        ("kafka: {brokers: ['nohost']}\n", "kafka.brokers[0]", "host:port"),
        ("api: {listen: 'localhost:99999'}\n", "api.listen", "host:port"),
        ("enrichment: {sampling: {override: {'10.0.0.0/33': 100}}}\n",
         "enrichment.sampling.override['10.0.0.0/33']", "does not appear to be an IPv4 or IPv6 network"),
        # an empty token once turned authentication off without a word
        ("api: {token: ''}\n", "api.token", "non-empty token"),
        ("api: {token: '   '}\n", "api.token", "non-empty token"),
        ("api: {token: 'tok en'}\n", "api.token", "printable ASCII"),
        ("api: {query_slots: 0}\n", "api.query_slots", "greater than or equal to 1"),
        ("api: {queue_wait: 2h}\n", "api.queue_wait", "between 0s and 60s"),
        ("api: {max_connections: 1}\n", "api.max_connections", "greater than or equal to 4"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    lines = [line.strip() for line in str(err.value).splitlines()]
    assert any(line.startswith(f"{key}:") and reason in line for line in lines), str(err.value)


def test_bad_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "kafka: [unclosed\n"))


def test_duplicate_listener_names_rejected(tmp_path: Path) -> None:
    text = ("inlet: {listeners: [{name: a, port: 1, decoder: netflow},"
            " {name: a, port: 2, decoder: sflow}]}\n")
    with pytest.raises(ConfigError, match="inlet.listeners: .*unique"):
        load_settings(write(tmp_path, text))


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "kafka: {brokers: ['file:9092'], partitions: 2}\nclickhouse: {ttl: {flows: 3d}}\n")
    monkeypatch.setenv("WAXFLOW__KAFKA__BROKERS", "env1:9092,env2:9093")
    monkeypatch.setenv("WAXFLOW__CLICKHOUSE__TTL__FLOWS", "36h")
    settings = load_settings(path)
    assert settings.kafka.brokers == ["env1:9092", "env2:9093"]
    assert settings.kafka.partitions == 2  # the file's other keys in the same section survive
    assert settings.clickhouse.ttl.flows == timedelta(hours=36)


def test_bad_environment_value_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW__KAFKA__PARTITIONS", "-1")
    with pytest.raises(ConfigError, match="kafka.partitions"):
        load_settings(write(tmp_path, ""))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("15m", 900), ("1h30m", 5400),
                                               ("15d", 1296000), ("2w", 1209600), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    value = parse_duration(text)
    assert value.total_seconds() == seconds
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("dataflow", ["flows.inlet", "flows.outlet"])
def test_dataflow_with_a_bad_value_exits_2_naming_the_key(dataflow: str, tmp_path) -> None:
    env = {**os.environ, "WAXFLOW__KAFKA__PARTITIONS": "-3"}
    done = subprocess.run([sys.executable, "-m", "bytewax.run", dataflow], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "kafka.partitions" in done.stderr


def test_empty_token_fails_config_check_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = write(tmp_path, "api: {token: ''}\n")
    done = subprocess.run([sys.executable, "-m", "waxflow", "--config", str(config), "config", "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "api.token" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
