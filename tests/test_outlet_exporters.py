"""End to end with real exporters: softflowd (NetFlow v5, v9, IPFIX) and pmacct sfprobe (sFlow)
send a generated pcap's flows to a running inlet (real UDP listeners) on the test broker; the
outlet (started through `waxflow run outlet`) writes them to chDB. Per-5-tuple totals in `flows`
equal the pcap's, and the aggregated tables hold the same totals as `flows`.

One inlet and one outlet serve every exporter; the exporters run one after the other, a second
apart, so that each one's flows are told apart by TimeReceived (the inlet's receive time)."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import pytest

from flows import ddl
from tests import flowgen, inlet_process
from tests.conftest import free_port
from tests.outlet_process import Outlet, write_config
from tests.test_inlet_flow import promtool_check

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not flowgen.have("softflowd"), reason="softflowd binary missing (Debian package softflowd)"),
    pytest.mark.skipif(not flowgen.have("pmacctd"), reason="pmacctd binary missing (Debian package pmacct)"),
]

EXPORTS = ["softflowd-v5", "softflowd-v9", "softflowd-ipfix", "pmacct-sflow"]


def _export(name: str, pcap: Path, netflow_port: int, sflow_port: int) -> None:
    if name == "pmacct-sflow":
        flowgen.send_pmacct(pcap, sflow_port, "sfprobe")
    else:
        version = {"softflowd-v5": 5, "softflowd-v9": 9, "softflowd-ipfix": 10}[name]
        flowgen.send_softflowd(pcap, version, netflow_port)


@pytest.fixture(scope="module")
def pipeline(broker, tmp_path_factory):
    """Run every exporter through inlet → Kafka → outlet → chDB; stop; yield what was stored."""
    workdir = tmp_path_factory.mktemp("exporters")
    pcap = workdir / "traffic.pcap"
    totals = flowgen.make_pcap(pcap, flows=150, filler=40)
    netflow_port, sflow_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    inlet_metrics_port, api_port = free_port(), free_port()
    topic = f"exp-{workdir.name[-12:].replace('_', '-')}"
    config = write_config(
        workdir, bootstrap=broker.bootstrap, topic=topic, api_port=api_port,
        inlet={"listeners": [
            {"name": "netflow", "address": "127.0.0.1", "port": netflow_port, "decoder": "netflow"},
            {"name": "sflow", "address": "127.0.0.1", "port": sflow_port, "decoder": "sflow"}],
            "metrics_listen": f"127.0.0.1:{inlet_metrics_port}", "bpffs": str(inlet_process.TEST_BPFFS)},
        kafka={"partitions": 2})
    inlet = inlet_process.start(config, workdir / "inlet.log", inlet_metrics_port,
                                wait_topic=f"{topic}-v1", bootstrap=broker.bootstrap)
    outlet = Outlet(config, api_port).start()
    windows = {}
    try:
        for name in EXPORTS:
            started = time.time()
            _export(name, pcap, netflow_port, sflow_port)
            ended = time.time()
            windows[name] = (math.floor(started), math.floor(ended))
            time.sleep(max(0.0, math.floor(ended) + 1.05 - time.time()))  # the next one in a later second
        inlet_totals = inlet.totals() if inlet.stop() == 0 else None
        assert inlet_totals and inlet_totals["acked"] == inlet_totals["produced"] > 0, inlet.text()[-3000:]
        outlet.wait_idle(inlet_totals["acked"])
        outlet.wait_for(lambda o: o.value("waxflow_kafka_consumer_lag") == 0, 30, "lag back to 0")
        counters, exposition = outlet.metrics(), outlet.exposition()
        outlet.kill()
    finally:
        inlet.stop()
        outlet.stop()
    return {"totals": totals, "windows": windows, "outlet": outlet, "counters": counters, "exposition": exposition,
            "messages": inlet_totals["acked"]}


def _stored_totals(outlet: Outlet, window: tuple[int, int]) -> dict:
    (rows,) = outlet.query(
        "SELECT toString(SrcAddr) AS src, toString(DstAddr) AS dst, Proto, SrcPort, DstPort, "
        "sum(Packets) AS packets, sum(Bytes) AS bytes FROM waxflow.flows "
        f"WHERE toUnixTimestamp(TimeReceived) BETWEEN {window[0]} AND {window[1]} "
        "GROUP BY src, dst, Proto, SrcPort, DstPort")
    out: dict = {}
    for row in rows:
        key = flowgen.flow_key(row["src"], row["dst"], row["Proto"], row["SrcPort"], row["DstPort"])
        entry = out.setdefault(key, [0, 0])
        entry[0] += int(row["packets"])
        entry[1] += int(row["bytes"])
    return out


@pytest.mark.parametrize("export", EXPORTS)
def test_per_five_tuple_totals_equal_the_pcap(pipeline, export: str) -> None:
    totals = pipeline["totals"]
    got = _stored_totals(pipeline["outlet"], pipeline["windows"][export])
    if export == "softflowd-v5":  # NetFlow v5 carries IPv4 only
        totals = {k: v for k, v in totals.items() if ":" not in k[0]}
    if export == "pmacct-sflow":
        # sfprobe holds back its last partly filled datagram: only the filler flows may be short.
        core = {k: v for k, v in totals.items() if not k[0].startswith("198.51.100.")}
        assert {k: got.get(k) for k in core} == core
        assert set(got) <= set(totals)
        return
    assert got == totals


def test_counters_account_for_every_message(pipeline) -> None:
    counters = pipeline["counters"]

    def total(name: str) -> float:
        return sum(v for (n, _), v in counters.items() if n == name)
    assert total("waxflow_outlet_messages_total") == pipeline["messages"]
    assert total("waxflow_outlet_dropped_messages_total") == 0
    assert total("waxflow_decode_errors_total") == 0
    assert total("waxflow_clickhouse_rows_total") == total("waxflow_outlet_flows_total") > 0
    assert total("waxflow_clickhouse_errors_total") == 0
    promtool_check(pipeline["exposition"])
    lag = {dict(labels)["partition"]: v for (n, labels), v in counters.items() if n == "waxflow_kafka_consumer_lag"}
    assert lag == {"0": 0, "1": 0}


@pytest.mark.parametrize("table,seconds", [(f"flows_{suffix}", seconds) for suffix, seconds, _ in ddl.RESOLUTIONS])
def test_aggregated_tables_hold_the_totals_of_flows(pipeline, table: str, seconds: int) -> None:
    """Per group of the aggregated table's dimensions, sum(Bytes) and sum(Packets) equal those of
    `flows` (summed here, not relying on SummingMergeTree merges having run)."""
    dims = [d for d in ddl.aggregate_dimensions() if d != "TimeReceived"]
    group = f"toString(tuple({', '.join(dims)}))"
    aggregated, raw = pipeline["outlet"].query(
        f"SELECT toUnixTimestamp(TimeReceived) AS t, {group} AS g, sum(Bytes) AS b, sum(Packets) AS p "
        f"FROM waxflow.{table} GROUP BY t, g",
        f"SELECT toUnixTimestamp(toStartOfInterval(TimeReceived, toIntervalSecond({seconds}))) AS t, "
        f"{group} AS g, sum(Bytes) AS b, sum(Packets) AS p FROM waxflow.flows GROUP BY t, g")

    def by_group(rows):
        return {(r["t"], r["g"]): (int(r["b"]), int(r["p"])) for r in rows}
    assert raw, "no flows stored"
    assert by_group(aggregated) == by_group(raw)
