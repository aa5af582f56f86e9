"""Run the real outlet the way users do (`waxflow run outlet`, i.e. connectors/launcher.py) in
subprocesses, read its /metrics, and query its chDB store afterwards. For tests and bench/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def write_config(workdir: Path, *, bootstrap: str, topic: str, api_port: int,
                 consumer_group: str | None = None, start_offset: str = "earliest",
                 batch_rows: int = 50_000, batch_wait: str = "1s", **sections: Any) -> Path:
    """A dataflows.yaml for one outlet: its own chDB store and data_dir under `workdir`."""
    config: dict[str, Any] = {
        "data_dir": str(workdir / "data"),
        "kafka": {"brokers": [bootstrap], "topic": topic, "start_offset": start_offset,
                  "consumer_group": consumer_group or f"outlet-{topic}"},
        "clickhouse": {"dsn": f"chdb:{workdir / 'data' / 'clickhouse'}", "batch_rows": batch_rows,
                       "batch_wait": batch_wait},
        "api": {"listen": f"127.0.0.1:{api_port}"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = workdir / "dataflows.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition → {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@dataclass
class Outlet:
    """One outlet cluster: `processes` processes of `workers` workers each, started through the
    launcher with recovery (snapshots every `snapshot_seconds`)."""

    config: Path
    api_port: int
    workers: int = 1
    processes: int = 1
    snapshot_seconds: float = 1.0
    cluster_ports: list[int] = field(default_factory=list)
    dataflow: str | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.config.parent

    def log(self, i: int = 0) -> Path:
        return self.workdir / f"outlet-{i}.log"

    def argv(self, process: int) -> list[str]:
        """`waxflow run outlet ...`; or, for another `dataflow` (bench variants), the command
        line the launcher would build for it."""
        addresses = [f"127.0.0.1:{p}" for p in self.cluster_ports] if self.processes > 1 else None
        if self.dataflow is None:
            argv = [sys.executable, "-m", "waxflow", "--config", str(self.config), "run", "outlet",
                    "-w", str(self.workers), "-s", f"{self.snapshot_seconds:g}"]
            return argv + (["-i", str(process), "-a", ";".join(addresses)] if addresses else [])
        from connectors.launcher import dataflow_argv, ensure_recovery_store, recovery_dir

        store = ensure_recovery_store(recovery_dir(self.workdir / "data", "outlet"))
        argv = dataflow_argv("outlet", workers=self.workers, recovery=store,
                             snapshot_seconds=self.snapshot_seconds, process_id=process, addresses=addresses)
        argv[argv.index("flows.outlet")] = self.dataflow
        return argv

    def start(self) -> Outlet:
        for i in range(self.processes):
            argv = self.argv(i)
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                   "WAXFLOW_CONFIG": str(self.config)}
            with open(self.log(i), "ab") as handle:
                self.procs.append(subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=handle,
                                                   stderr=subprocess.STDOUT))
        return self

    def text(self) -> str:
        return "\n".join(self.log(i).read_text(errors="replace")[-3000:]
                         for i in range(self.processes) if self.log(i).exists())

    def assert_running(self) -> None:
        for proc in self.procs:
            assert proc.poll() is None, f"outlet exited with {proc.returncode}:\n{self.text()}"

    def exposition(self, process: int = 0) -> str:
        """One process's /metrics text, as Prometheus reads it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port + process}/metrics", timeout=5) as response:
            return response.read().decode()

    def metrics(self, process: int | None = None) -> dict:
        """Every process's metrics (or one process's), summed per (name, labels)."""
        total: dict = {}
        for i in range(self.processes) if process is None else [process]:
            for key, value in parse_metrics(self.exposition(i)).items():
                total[key] = total.get(key, 0.0) + value
        return total

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none yet)."""
        try:
            samples = self.metrics()
        except OSError:
            return 0.0
        wanted = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))

    def wait_for(self, condition: Callable[[Outlet], bool], timeout: float = 120,
                 what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                if condition(self):
                    return
            except OSError:  # /metrics not served yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"outlet: {what} not reached in {timeout}s:\n{self.text()}")

    def wait_idle(self, messages: int, timeout: float = 120) -> None:
        """Until `messages` Kafka messages are read, every decoded flow is inserted and nothing
        is pending, twice in a row half a second apart."""
        def idle(outlet: Outlet) -> bool:
            m = outlet.metrics()

            def total(name: str) -> float:
                return sum(v for (n, _), v in m.items() if n == name)
            return (total("waxflow_outlet_messages_total") >= messages
                    and total("waxflow_clickhouse_pending_rows") == 0
                    and total("waxflow_clickhouse_rows_total") == total("waxflow_outlet_flows_total"))
        self.wait_for(lambda o: idle(o) and (time.sleep(0.5) or idle(o)), timeout,
                      f"{messages} messages read and inserted")

    def kill(self) -> None:
        """SIGKILL every process (what the recovery tests want, and a fast stop otherwise)."""
        self.assert_running()
        for proc in self.procs:
            proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait(10)
        self.procs = []

    def stop(self) -> None:
        """Stop whatever still runs (fixtures' cleanup)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        self.procs = []

    def query(self, *sqls: str) -> list[list[dict]]:
        """Rows of each query, read from a separate process once the outlet is stopped (chDB lets
        one process own its directory)."""
        assert not self.procs, "stop the outlet before querying its embedded store"
        return query_store(self.config, *sqls)


# --- what the tests feed the outlet ---------------------------------------------------------------

FLOWS_PER_DATAGRAM = 10


def v5_datagram(seq: int, flows: int = FLOWS_PER_DATAGRAM) -> bytes:
    """NetFlow v5 with `flows` records, each identified by (source port = seq, destination port
    = 1000 + j) and carrying j + 1 packets and 100 * (j + 1) bytes."""
    from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

    records = [NetflowRecordV5(src=f"10.{seq % 250}.0.{j + 1}", dst="203.0.113.9", srcport=seq % 65536,
                               dstport=1000 + j, prot=17, dpkts=j + 1, dOctets=100 * (j + 1))
               for j in range(flows)]
    packet = NetflowHeader() / NetflowHeaderV5(count=len(records), unixSecs=int(time.time()),
                                               flowSequence=seq)
    for record in records:
        packet = packet / record
    return bytes(packet)


def expected_v5_flows(seqs: Iterable[int], flows: int = FLOWS_PER_DATAGRAM) -> set[tuple[int, int]]:
    return {(seq % 65536, 1000 + j) for seq in seqs for j in range(flows)}


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Produce (key, value) messages; returns how many."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    count = 0
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0
    return count


def v5_messages(seqs: Iterable[int], exporters: list[str]) -> Iterator[tuple[bytes, bytes]]:
    """Envelopes of v5 datagrams, datagram `seq` from exporter seq % len(exporters)."""
    from flows import envelope

    for seq in seqs:
        exporter = exporters[seq % len(exporters)]
        yield envelope.address_bytes(exporter), envelope.encode(
            "netflow", 0, time.time_ns(), exporter, 2055, v5_datagram(seq))


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(15)


def query_store(config: Path, *sqls: str) -> list[list[dict]]:
    result = subprocess.run([sys.executable, "-m", "tests.outlet_process", str(config), *sqls],
                            cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _main(config: str, *sqls: str) -> None:
    """What `waxflow query` runs on a stopped store, with room for every row the tests read."""
    from connectors.http import ReadOnlySession, sql_result
    from flows.settings import load_settings

    settings = load_settings(config)
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"max_rows": 1_000_000})})
    session = ReadOnlySession(settings, "user")
    out = []
    for sql in sqls:
        result = sql_result(session, settings, sql)
        assert not result["truncated"], sql
        out.append([dict(zip(result["columns"], row)) for row in result["rows"]])
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    _main(*sys.argv[1:])
