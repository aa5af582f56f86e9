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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent
TEST_BPFFS = Path("/sys/fs/bpf/waxflow-tests")   # not the operators' default directory
SIZE = 1400                # bytes of each datagram paced_send sends
POOL = 64                  # distinct random buffers of 46 datagrams each
UDP_SEGMENT = 103          # linux/udp.h


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
            raise AssertionError(f"inlet did not stop within {timeout}s:\n{self.text()[-3000:]}") from None

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
                 balancing: str = "auto", partitions: int = 2, receive_buffer: int | None = None,
                 **kafka: object) -> Path:
    config = {
        "inlet": {"listeners": [{"name": "netflow", "address": "127.0.0.1", "port": port,
                                 "decoder": "netflow"}],
                  "metrics_listen": f"127.0.0.1:{metrics_port}", "balancing": balancing,
                  "bpffs": str(TEST_BPFFS)},
        "kafka": {"brokers": [bootstrap], "topic": topic, "partitions": partitions, **kafka},
    }
    if receive_buffer:
        config["inlet"]["listeners"][0]["receive_buffer"] = receive_buffer
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


def paced_send(port: int, rate: int, count: int, catch_up: bool = True) -> None:
    """A sender process (bench/inlet.py, tests): `count` datagrams at `rate`/s from one
    connected socket to 127.0.0.1:`port`. It uses UDP segmentation offload (UDP_SEGMENT): one send() of up to 46 × 1400 bytes that the kernel
    cuts into separate 1400-byte datagrams, so the sender's share of the shared cores stays
    small (it prints its CPU time). The inlet's sockets do not ask for UDP_GRO, so each
    datagram reaches them on its own, as from a router; the kernel picks the socket once per
    send, so the round-robin spreads groups of up to 46 datagrams. When the sender falls
    behind (the cores are shared) it catches up with back-to-back sends, unless `catch_up` is
    False: then it sends one group per wake-up and the rate reached is lower instead."""
    per_send = 65507 // SIZE
    pool = [os.urandom(SIZE * per_send) for _ in range(POOL)]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, SIZE)
    tx.connect(("127.0.0.1", port))
    cpu0, start = time.process_time(), time.perf_counter()
    sent = sends = 0
    while sent < count:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        if not catch_up:
            due = min(due, sent + per_send)
        while sent < due:
            batch = min(due - sent, per_send)
            tx.send(memoryview(pool[sends % POOL])[:batch * SIZE])
            sent += batch
            sends += 1
        if sent < count:
            time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    # What was sent, in how long, at what CPU cost.
    print(f"{sent} {elapsed:.4f} {time.process_time() - cpu0:.4f}", flush=True)


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped on the sockets bound to `port` (/proc/net/udp "drops"):
    immediate, where SO_RXQ_OVFL only reports with the next datagram received."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                total += int(fields[-1])
    return total
