"""Configuration that used to pass `config check` and fail later (issue 15): each is refused by
`waxflow config check` and by the dataflow that uses it at startup, exit 2 naming the key, no
traceback; and the outlet migrates its store before it consumes anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "dataflows.yaml").write_text(text)
    return subprocess.run([sys.executable, "-m", "waxflow", "-c", "dataflows.yaml", "config", "check"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


CASES = [
    ("enrichment: {geoip: {asn_database: not.mmdb}}\n", "enrichment.geoip.asn_database[0]", "not a readable MMDB"),
    ("kafka: {producer: {no.such.property: 1}}\n", "kafka.producer", "No such configuration property"),
    ("kafka: {consumer: {fetch.wait.max.ms: soon}}\n", "kafka.consumer", "Invalid value"),
    ("inlet: {listeners: [{name: a, address: 192.0.2.77, port: 2055, decoder: netflow}]}\n",
     "inlet.listeners[0].address", "not an address of this host"),
    ("clickhouse: {asns_file: missing.csv}\n", "clickhouse.asns_file", "does not point to a file"),
    ("data_dir: /proc/waxflow\n", "data_dir", "not a writable directory"),
    ("clickhouse: {dsn: 'chdb:/proc/waxflow/store'}\n", "clickhouse.dsn", "not a writable directory"),
    ("inlet: {listeners: [{name: a, port: true, decoder: netflow}]}\n", "inlet.listeners[0].port",
     "not true/false"),
    ("inlet: {listeners: []}\n", "inlet.listeners", "at least 1 item"),
    ("kafka: {partitions: 2}\nkafka: {partitions: 3}\n", "kafka", "given twice"),
    ("enrichment: {classifiers: {exporter: [{match: {name: '^(\\w+)\\1$'}, set: {site: x}}]}}\n",
     "enrichment.classifiers.exporter[0].match.name", "no backreferences"),
]


@pytest.mark.parametrize("text, key, reason", CASES)
def test_config_check_refuses_it_naming_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    (tmp_path / "not.mmdb").write_text("not a database\n")
    done = _check(tmp_path, text)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert any(key in line and reason in line for line in output.splitlines()), output
    assert "Traceback" not in output


def test_an_unknown_environment_key_is_refused(tmp_path: Path) -> None:
    done = _check(tmp_path, "", {"WAXFLOW__NOSUCH__KEY": "1", "WAXFLOW__KAFKA__PARTITINS": "3"})
    assert done.returncode == 2
    assert "WAXFLOW__NOSUCH__KEY: unknown key" in done.stderr and "WAXFLOW__KAFKA__PARTITINS" in done.stderr
    # free-form mappings take any key, and the good keys still work
    done = _check(tmp_path, "", {"WAXFLOW__KAFKA__CONSUMER": '{"fetch.min.bytes": "1"}',
                                 "WAXFLOW__API__TOKEN": "a-token"})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("dataflow, text, key", [
    ("flows.inlet", "inlet: {listeners: [{name: a, address: 192.0.2.77, port: 2055, decoder: netflow}]}\n",
     "inlet.listeners[0].address"),
    ("flows.inlet", "kafka: {producer: {no.such.property: 1}}\n", "kafka.producer"),
    ("flows.outlet", "enrichment: {geoip: {geo_database: not.mmdb}}\n", "enrichment.geoip.geo_database[0]"),
    ("flows.outlet", "kafka: {consumer: {no.such.property: 1}}\n", "kafka.consumer"),
])
def test_a_dataflow_refuses_it_at_startup(tmp_path: Path, dataflow: str, text: str, key: str) -> None:
    (tmp_path / "not.mmdb").write_text("not a database\n")
    (tmp_path / "dataflows.yaml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "bytewax.run", dataflow], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert key in done.stderr and "Traceback" not in done.stderr


def test_the_outlet_migrates_before_it_consumes(tmp_path: Path) -> None:
    """No broker answers: the store is still migrated at startup, not at the first batch."""
    api = free_port()
    (tmp_path / "dataflows.yaml").write_text(
        f"kafka: {{brokers: ['127.0.0.1:{free_port()}']}}\napi: {{listen: '127.0.0.1:{api}'}}\n")
    log = tmp_path / "outlet.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.outlet"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while "migration: create view exporters_consumer" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.5)
        assert "api: serving" not in log.read_text().split("migration: create table flows")[0]
    finally:
        proc.kill()
        proc.wait(10)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    done = _check(tmp_path, "inlet:\n  listeners:\n    - &base {name: a, port: 2055, decoder: netflow}\n"
                            "    - {<<: *base, name: b, port: 2056}\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("text, key", [
    ("inlet: {listeners: [{name: a, port: 2055, decoder: netflow, receive_buffer: true}]}\n",
     "inlet.listeners[0].receive_buffer"),
    ("inlet: {? [a, b] : 1}\n", "mapping key"),
])
def test_more_values_that_are_refused(tmp_path: Path, text: str, key: str) -> None:
    done = _check(tmp_path, text)
    assert done.returncode == 2 and key in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_checking_directories_creates_none(tmp_path) -> None:
    """`config check` says whether data_dir and the store could be made, without making them."""
    from connectors.config_checks import environment_problems
    from flows.settings import load_settings

    config = tmp_path / "dataflows.yaml"
    config.write_text(f"data_dir: {tmp_path / 'a' / 'b'}\nclickhouse: {{dsn: 'chdb:{tmp_path / 'c' / 'store'}'}}\n")
    assert environment_problems(load_settings(config), ("directories",)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataflows.yaml"]


@pytest.mark.parametrize("make", ["dangling", "loop"])
def test_a_symlink_that_leads_nowhere_is_no_directory(tmp_path, make: str) -> None:
    import os

    from connectors.config_checks import _writable

    link = tmp_path / "data"
    os.symlink(tmp_path / ("nowhere" if make == "dangling" else "data"), link)
    assert "not a directory" in _writable(link / "sub")
