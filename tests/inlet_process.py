"""Run the real inlet (`python -m bytewax.run flows.inlet`) in a subprocess for tests and bench."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent
TEST_BPFFS = Path("/sys/fs/bpf/waxflow-tests")   # not the operators' default directory


@dataclass
class Inlet:
    process: subprocess.Popen
    log: Path
    metrics_port: int
    terminated: bool = False

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def terminate(self) -> None:
        """SIGTERM: a clean stop (a cluster stops when all its processes have been told).
        Sent once: a second one aborts the inlet (and kills it outright once Python is
        shutting down and has put the default handler back)."""
        if not self.terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (once) and wait; kill if it does not end in time."""
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"inlet did not stop within {timeout}s:\n{self.text()[-3000:]}")

    def totals(self) -> dict[str, int]:
        """Sum of the per-worker summary lines the Kafka sink logs at a clean stop."""
        sums = {"produced": 0, "acked": 0, "failed": 0, "discarded": 0, "unacknowledged": 0}
        pattern = (r"produced (\d+), acked (\d+), failed (\d+), discarded (\d+), "
                   r"unacknowledged after flush (\d+)")
        for match in re.finditer(pattern, self.text()):
            for key, value in zip(sums, match.groups()):
                sums[key] += int(value)
        return sums


def write_config(path: Path, *, port: int, metrics_port: int, bootstrap: str, topic: str,
                 balancing: str = "auto", partitions: int = 2, **kafka: object) -> Path:
    config = {
        "inlet": {"listeners": [{"name": "netflow", "address": "127.0.0.1", "port": port,
                                 "decoder": "netflow"}],
                  "metrics_listen": f"127.0.0.1:{metrics_port}", "balancing": balancing,
                  "bpffs": str(TEST_BPFFS)},
        "kafka": {"brokers": [bootstrap], "topic": topic, "partitions": partitions, **kafka},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, log: Path, metrics_port: int, *args: str) -> Inlet:
    env = {**os.environ, "WAXFLOW_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.inlet", *args],
                                   cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return Inlet(process, log, metrics_port)


def wait_ready(inlet: Inlet, wait_topic: str | None = None, bootstrap: str | None = None,
               timeout: float = 60.0) -> Inlet:
    """Until its sockets are bound (and its topic exists, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inlet.process.poll() is not None:
            raise AssertionError(f"inlet exited with {inlet.process.returncode}:\n"
                                 f"{inlet.text()[-3000:]}")
        if "balancing" in inlet.text() and (wait_topic is None or _topic_exists(bootstrap, wait_topic)):
            return inlet
        time.sleep(0.2)
    inlet.stop(10)
    raise AssertionError(f"inlet not ready in {timeout}s:\n{inlet.text()[-3000:]}")


def start(config: Path, log: Path, metrics_port: int, *args: str,
          wait_topic: str | None = None, bootstrap: str | None = None,
          timeout: float = 60.0) -> Inlet:
    """Start and wait until ready."""
    return wait_ready(launch(config, log, metrics_port, *args), wait_topic, bootstrap, timeout)


def _topic_exists(bootstrap: str | None, topic: str) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return topic in admin.list_topics(timeout=5).topics


def consecutive_ports(count: int) -> int:
    """The first of `count` free consecutive TCP ports (process i of a cluster serves its
    metrics on metrics_listen's port + i)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                socket.create_server(("127.0.0.1", port)).close()
        except OSError:
            continue
        return first


def cluster_args(processes: int, workers: int) -> Iterator[list[str]]:
    """Bytewax arguments of each process of a cluster of `processes` × `workers`."""
    if processes == 1:
        yield ["-w", str(workers)]
        return
    addresses = []
    for _ in range(processes):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            addresses.append(f"127.0.0.1:{probe.getsockname()[1]}")
    for index in range(processes):
        yield ["-w", str(workers), "-i", str(index), "-a", ";".join(addresses)]


def start_cluster(config: Path, logs: Path, metrics_port: int, processes: int, workers: int,
                  wait_topic: str | None = None, bootstrap: str | None = None) -> list[Inlet]:
    """Start every process of the cluster, then wait until all are ready (they start together)."""
    inlets = [launch(config, logs / f"inlet-{index}.log", metrics_port + index, *args)
              for index, args in enumerate(cluster_args(processes, workers))]
    try:
        for inlet in inlets:
            wait_ready(inlet, wait_topic, bootstrap)
    except BaseException:
        for inlet in inlets:
            inlet.terminate()
        raise
    return inlets
