"""`waxflow up --demo` as a user runs it (a subprocess, stdout not a TTY), on free ports in a
directory of its own: flows reach the store with names and countries, the API and the look-up
commands answer while it runs, and SIGINT stops every child, loses no flow and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 180


def waxflow(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "waxflow", "-c", "cfg.yaml", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children are in sessions of their own, but still its children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.output = workdir / "up.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "waxflow", "-c", "cfg.yaml", "up", "--demo", "--demo-rate", "400"],
            cwd=workdir, stdout=open(self.output, "wb"), stderr=subprocess.STDOUT, env=_env())
        self.children: set[int] = set()

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while "ready:" not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.5)
        self.children = descendants(self.proc.pid)

    def query(self, sql: str) -> list[dict]:
        done = waxflow(self.workdir, "query", sql, "--format", "jsonl")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


def _config(workdir: Path) -> None:
    udp = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
    config = {
        "inlet": {"listeners": [{"name": n, "address": "127.0.0.1", "port": p, "decoder": d}
                                for n, p, d in zip(("netflow", "ipfix", "sflow"), udp,
                                                   ("netflow", "netflow", "sflow"))],
                  "metrics_listen": f"127.0.0.1:{free_port()}",
                  "balancing": "hash"},  # the eBPF maps pinned in bpffs are the inlet tests' business
        "kafka": {"brokers": [f"127.0.0.1:{free_port()}"], "partitions": 2},
        "clickhouse": {"dsn": "chdb:data/clickhouse", "batch_wait": "2s"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "data_dir": "data",
    }
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def up(tmp_path_factory) -> Up:
    workdir = tmp_path_factory.mktemp("up")
    _config(workdir)
    stack = Up(workdir)
    try:
        stack.wait_ready()
        yield stack
    finally:
        shut_down(stack)


def shut_down(stack: Up) -> None:
    """A fixture's end: Ctrl-C, then kill whatever is left of it and its children."""
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGINT)
        try:
            stack.proc.wait(120)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
    for pid in stack.children:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _wait_for_rows(up: Up, sql: str, timeout: float = 90) -> int:
    deadline, count = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        count = up.query(sql)[0]["n"]
        if count:
            return count
        time.sleep(2)
    return count


def test_flows_reach_the_store_and_the_api_answers(up: Up) -> None:
    assert {"outlet", "inlet", "demo-exporter"} <= {line.split(":")[0] for line in up.text().splitlines()}
    assert _wait_for_rows(up, "SELECT count() AS n FROM waxflow.flows") > 0, up.text()
    exporters = up.query("SELECT DISTINCT IPv6NumToString(ExporterAddress) AS a FROM waxflow.flows ORDER BY a")
    assert [row["a"] for row in exporters] == ["::ffff:127.0.1.1", "::ffff:127.0.1.2", "::ffff:127.0.1.3"]
    done = waxflow(up.workdir, "top", "--by", "SrcAS", "--last", "15m", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    top = [json.loads(line) for line in done.stdout.splitlines()]
    assert top and all(row["bps"] > 0 for row in top)
    assert any(row["SrcAS"] == "2906" for row in top)  # Netflix is the demo's biggest source
    time.sleep(3)  # the stack keeps running: the live loop scrapes the API meanwhile
    assert up.proc.poll() is None, up.text()


def test_exporter_and_interface_names_are_stored(up: Up) -> None:
    """The demo configuration's enrichment.static names the routers and their interfaces."""
    named = _wait_for_rows(up, "SELECT count() AS n FROM waxflow.flows WHERE ExporterName = 'edge1.par' "
                               "AND InIfName != ''", timeout=30)
    assert named > 0, "flows carry no exporter or interface names: is enrichment.static applied?"
    rows = up.query("SELECT DISTINCT ExporterName AS e, InIfDescription AS d FROM waxflow.flows")
    assert {row["e"] for row in rows} == {"edge1.par", "edge2.ams", "edge3.fra"}
    assert any(row["d"].startswith("PNI: Netflix") for row in rows)
    assert any(row["d"].startswith("Transit: Cogent") for row in rows)
    # the demo's classifiers (merged ahead of the user's) give sites and interface classes
    classified = up.query("SELECT count() AS n FROM waxflow.flows WHERE ExporterSite = 'par' "
                          "AND InIfBoundary = 'external' AND InIfProvider != ''")
    assert classified[0]["n"] > 0, "the demo's classifiers were not applied"


def test_countries_are_stored(up: Up) -> None:
    """The demo configuration's enrichment.networks gives countries (and AS numbers to sFlow)."""
    countries = _wait_for_rows(up, "SELECT count() AS n FROM waxflow.flows WHERE SrcCountry = 'US'", timeout=30)
    assert countries > 0, "flows carry no countries: is enrichment.networks applied?"
    sflow_as = up.query("SELECT count() AS n FROM waxflow.flows WHERE ExporterName = 'edge3.fra' AND SrcAS = 2906")
    assert sflow_as[0]["n"] > 0


def test_sigint_stops_everything_cleanly_and_loses_nothing(up: Up) -> None:
    broker_pid = int((up.workdir / "data" / "broker.pid").read_text())
    assert broker_pid in up.children and len(up.children) >= 4  # broker, outlet, inlet, demo exporter
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(120) == 0, up.text()
    assert not [pid for pid in up.children if alive(pid)], up.text()
    log = (up.workdir / "data" / "logs" / "demo-exporter.log").read_text()
    sent = int(log.split("sent ")[1].split()[0])
    # Stopped: `waxflow query` now opens the store directly; every flow sent is there.
    stored = up.query("SELECT count() AS n FROM waxflow.flows")[0]["n"]
    assert stored == sent > 0, up.text()
    for child in ("inlet", "outlet"):  # an ordinary stop leaves no crash report in the logs
        text = (up.workdir / "data" / "logs" / f"{child}.log").read_text()
        assert "Traceback" not in text and "panicked" not in text and "signal received" not in text, text
        assert "SIGINT: " in text, text


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    _config(tmp_path)
    config = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    host, port = config["api"]["listen"].split(":")
    with socket.socket() as other:
        other.bind((host, int(port)))
        other.listen()
        done = waxflow(tmp_path, "up", "--demo", timeout=60)
    assert done.returncode == 1
    assert f"TCP port {port} on 127.0.0.1 is taken by another program (api.listen)" in done.stdout
    assert not (tmp_path / "data" / "broker.pid").exists()


def test_a_second_sigint_kills_what_is_left(tmp_path: Path) -> None:
    _config(tmp_path)
    stack = Up(tmp_path)
    try:
        stack.wait_ready()
        stack.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        stack.proc.send_signal(signal.SIGINT)
        assert stack.proc.wait(60) == 0, stack.text()
        assert "second interrupt" in stack.text()
        assert not [pid for pid in stack.children if alive(pid)], stack.text()
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
        for pid in stack.children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
