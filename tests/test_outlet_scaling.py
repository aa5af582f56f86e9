"""Scaling: one worker, `-w 2`, and two processes (`-i 0/1 -a ...`) read the same 4-partition
topic into stores of their own and store the same per-exporter, per-5-tuple totals, which are
the pcap's. The datagrams are softflowd's (NetFlow v9 and IPFIX, with templates), replayed as
coming from eight exporters so that keys spread over the partitions and the workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows import envelope
from tests import flowgen
from tests.conftest import free_port
from tests.outlet_process import Outlet, create_topic, produce, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not flowgen.have("softflowd"), reason="softflowd binary missing (Debian package softflowd)"),
]

PARTITIONS = 4
EXPORTERS = [f"192.0.2.{i}" for i in range(1, 5)] + [f"2001:db8::{i}" for i in range(5, 9)]


@pytest.fixture(scope="module")
def topic(broker, tmp_path_factory):
    """The topic, filled once; returns (base name, messages, expected totals per exporter)."""
    workdir = tmp_path_factory.mktemp("scaling")
    pcap = workdir / "traffic.pcap"
    totals = flowgen.make_pcap(pcap, flows=150, filler=40)
    exports = {9: flowgen.run_softflowd(pcap, 9), 10: flowgen.run_softflowd(pcap, 10)}
    messages = []
    for i, exporter in enumerate(EXPORTERS):
        for payload, _, _ in exports[9 if i % 2 else 10]:
            messages.append((envelope.address_bytes(exporter),
                             envelope.encode("netflow", 0, time.time_ns(), exporter, 2055, payload)))
    name = f"scale-{workdir.name[-10:].replace('_', '-')}"
    create_topic(broker.bootstrap, envelope.topic_name(name), PARTITIONS)
    sent = produce(broker.bootstrap, envelope.topic_name(name), messages)
    expected = {(exporter, key): value for exporter in EXPORTERS for key, value in totals.items()}
    return name, sent, expected


def run_and_collect(broker, topic, workdir: Path, workers: int, processes: int) -> dict:
    name, sent, _ = topic
    workdir.mkdir()
    api_port = free_port()
    config = write_config(workdir, bootstrap=broker.bootstrap, topic=name, api_port=api_port,
                          consumer_group=f"{name}-{workers}-{processes}", batch_wait="500ms")
    outlet = Outlet(config, api_port, workers=workers, processes=processes,
                    cluster_ports=[free_port() for _ in range(processes)] if processes > 1 else [])
    try:
        outlet.start().wait_idle(sent)
        for i in range(processes):  # every process took part
            assert sum(v for (n, _), v in outlet.metrics(i).items() if n == "waxflow_outlet_messages_total") > 0
        outlet.kill()
    finally:
        outlet.stop()
    (rows,) = outlet.query(
        "SELECT toString(ExporterAddress) AS e, toString(SrcAddr) AS src, toString(DstAddr) AS dst, "
        "Proto, SrcPort, DstPort, sum(Packets) AS packets, sum(Bytes) AS bytes FROM waxflow.flows "
        "GROUP BY e, src, dst, Proto, SrcPort, DstPort")
    out: dict = {}
    for row in rows:
        exporter = flowgen.flow_key(row["e"], row["e"], 0, 0, 0)[0]
        key = flowgen.flow_key(row["src"], row["dst"], row["Proto"], row["SrcPort"], row["DstPort"])
        entry = out.setdefault((exporter, key), [0, 0])
        entry[0] += int(row["packets"])
        entry[1] += int(row["bytes"])
    return out


def test_one_worker_two_workers_and_two_processes_store_the_same_totals(broker, topic, tmp_path):
    one = run_and_collect(broker, topic, tmp_path / "w1", workers=1, processes=1)
    assert one == topic[2]
    assert run_and_collect(broker, topic, tmp_path / "w2", workers=2, processes=1) == one
    assert run_and_collect(broker, topic, tmp_path / "p2", workers=1, processes=2) == one
