"""The demo exporter: its NetFlow v9, IPFIX and sFlow encodings decode (with the project's decoders)
to the flows it generated, it sends from one loopback address per router over real UDP, and its
metadata is a valid configuration."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pyarrow as pa
import pytest

from connectors.demo_exporter import DemoError, DemoExporter, Target, targets
from flows import demo
from flows.decode import FlowDecoder
from flows.settings import Enrichment, Settings
from tests.conftest import free_port

NOW_MS = int(time.time() * 1000)


def encode(router: demo.Router, flows: list[demo.Flow], agent: str | None = None) -> bytes:
    """One datagram of the router's protocol; `agent`: the sFlow agent address (default the
    router's loopback address)."""
    if router.protocol == "netflow9":
        return demo.netflow_v9(flows, boot_ms=NOW_MS - 3_600_000, now_ms=NOW_MS, sequence=7, source_id=0,
                               sampling=router.sampling)
    if router.protocol == "ipfix":
        return demo.ipfix(flows, now_ms=NOW_MS, sequence=7, domain=0, sampling=router.sampling)
    return demo.sflow(flows, agent=agent or router.address, uptime_ms=1000, sequence=7, sample_sequence=1,
                      sampling=router.sampling)


def _v4(raw: bytes) -> int:
    return int(ipaddress.ip_address(raw).ipv4_mapped)


def enriched_rows(enrichment: Enrichment, router: demo.Router, flows: list[demo.Flow], exporter: str) -> list[dict]:
    """The router's flows, sent from `exporter` (also the sFlow agent), through the outlet's
    decode, static metadata and enrichment steps."""
    from flows.enrich import Enricher
    from flows.enrich.metadata import StaticMetadata, annotate

    static = StaticMetadata(enrichment.static)
    batch = FlowDecoder().decode_many([(encode(router, flows, agent=exporter), exporter, NOW_MS / 1000)])
    return pa.Table.from_batches([Enricher(enrichment)(*annotate(batch, static.name, static.interface))]).to_pylist()


@pytest.mark.parametrize("router", demo.ROUTERS, ids=lambda r: r.protocol)
def test_encodings_decode_to_the_generated_flows(router: demo.Router) -> None:
    size = demo.SAMPLES_PER_DATAGRAM if router.protocol == "sflow" else demo.FLOWS_PER_DATAGRAM
    flows = demo.Traffic(seed=3).flows(router, size, NOW_MS)
    batch = FlowDecoder().decode_many([(encode(router, flows), router.address, NOW_MS / 1000)])
    rows = pa.Table.from_batches([batch]).to_pylist()
    assert len(rows) == len(flows)
    for flow, row in zip(flows, rows):
        assert (_v4(row["SrcAddr"]), _v4(row["DstAddr"])) == (flow.src, flow.dst)
        assert (row["Proto"], row["InIfIndex"], row["OutIfIndex"]) == (flow.proto, flow.in_if, flow.out_if)
        assert row["SamplingRate"] == router.sampling
        if flow.proto in (6, 17):
            assert (row["SrcPort"], row["DstPort"]) == (flow.sport, flow.dport)
        if router.protocol == "sflow":  # one sampled packet per flow sample
            assert row["Packets"] == 1 and row["Bytes"] == max(64, min(1500, flow.octets // flow.packets))
        else:
            assert (row["Bytes"], row["Packets"]) == (flow.octets, flow.packets)
            assert (row["SrcAS"], row["DstAS"]) == (flow.src_as, flow.dst_as)


def test_traffic_has_variety() -> None:
    traffic = demo.Traffic(seed=1)
    flows = [f for router in demo.ROUTERS for f in traffic.flows(router, 400, NOW_MS)]
    assert len({f.src_as for f in flows} | {f.dst_as for f in flows}) >= 8
    assert {6, 17} <= {f.proto for f in flows} and len({f.dport for f in flows}) > 100
    kinds = {i.ifindex: i.kind for i in demo.interfaces(demo.ROUTERS[0])}
    assert {kinds[f.in_if] for f in flows} == {"transit", "pni", "ix", "customers"}


def test_diurnal_shape() -> None:
    assert demo.diurnal(21 * 3600) == pytest.approx(1.0)
    assert demo.diurnal(9 * 3600) == pytest.approx(0.2)
    assert demo.diurnal(15 * 3600) == pytest.approx(0.6)


def test_demo_metadata_is_a_valid_configuration() -> None:
    enrichment = Settings(enrichment=demo.demo_enrichment()).enrichment
    static = enrichment.static["127.0.1.1/32"]
    assert static.name == "edge1.par"
    assert static.interfaces[3].description.startswith("PNI: Netflix")
    assert static.interfaces[1].description.startswith("Transit: Cogent")
    assert enrichment.networks["45.57.0.0/17"].asn == 2906
    assert enrichment.networks["45.57.0.0/17"].country == "US"


def test_routers_send_from_their_own_addresses_over_udp() -> None:
    receivers = {}
    for router in demo.ROUTERS:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", free_port(socket.SOCK_DGRAM)))
        sock.settimeout(0.2)
        receivers[router.name] = sock
    targets = [Target(r, receivers[r.name].getsockname()) for r in demo.ROUTERS]
    exporter = DemoExporter(targets, rate=300, seed=5, shape=False)
    try:
        exporter.run(threading.Event(), duration=1.0)
    finally:
        exporter.close()
    decoder, datagrams = FlowDecoder(), []
    for router in demo.ROUTERS:
        while True:
            try:
                payload, source = receivers[router.name].recvfrom(65535)
            except TimeoutError:
                break
            assert source[0] == router.address
            datagrams.append((payload, source[0], time.time()))
        receivers[router.name].close()
    assert len(datagrams) == exporter.sent_datagrams
    batch = decoder.decode_many(datagrams)
    assert batch.num_rows == exporter.sent_flows > 150
    # the sFlow agent names the router as the source address does for NetFlow and IPFIX
    exporters = {str(ipaddress.ip_address(raw).ipv4_mapped) for raw in batch.column("ExporterAddress").to_pylist()}
    assert exporters == {router.address for router in demo.ROUTERS}


def _outbound_address() -> str | None:
    """An address of this machine that is not loopback (where a default route leaves), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_sflow_agent_is_the_address_datagrams_leave_from() -> None:
    """Sending to another host (as the compose demo does), the sFlow router cannot use its
    127.0.1.3: its agent is the address its datagrams leave from, the exporter the collector sees."""
    address = _outbound_address()
    if address is None:
        pytest.skip(reason="this machine has no non-loopback IPv4 address with a route")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((address, 0))
    receiver.settimeout(0.5)
    exporter = DemoExporter([Target(demo.router("edge3.fra"), receiver.getsockname())], rate=100, seed=2,
                            shape=False)
    try:
        exporter.run(threading.Event(), duration=0.5)
        payload, source = receiver.recvfrom(65535)
    finally:
        exporter.close()
        receiver.close()
    assert source[0] == address == exporter.agents["edge3.fra"]
    batch = FlowDecoder().decode_many([(payload, "192.0.2.99", time.time())])  # source ignored by sFlow
    assert {str(ipaddress.ip_address(raw).ipv4_mapped) for raw in batch.column("ExporterAddress").to_pylist()} \
        == {address}


def test_router_option_selects_routers() -> None:
    settings = Settings()
    chosen = targets(settings, "127.0.0.1", ["edge2.ams", "edge2.ams"])
    assert [(t.router.name, t.address) for t in chosen] == [("edge2.ams", ("127.0.0.1", 4739))]
    assert [t.router.name for t in targets(settings)] == [r.name for r in demo.ROUTERS]
    with pytest.raises(DemoError, match="no demo router 'edge9.xyz' \\(known: edge1.par, edge2.ams"):
        targets(settings, None, ["edge9.xyz"])


def test_demo_classifiers_only_touch_the_demo_routers() -> None:
    """The demo's classifiers are scoped to its routers' addresses: the same port plan on another
    exporter stays unclassified."""
    from flows.schema import BOUNDARIES

    config = demo.demo_enrichment()
    assert config["classifiers"]["interface"][0]["match"]["exporter_subnet"] == "127.0.1.0/30"
    stranger = "127.0.2.1"  # named like a demo router, with the same interfaces, but not one
    config["static"][f"{stranger}/32"] = {**config["static"]["127.0.1.1/32"], "name": "edge9.xyz"}
    enrichment = Settings(enrichment=config).enrichment
    router = demo.ROUTERS[0]
    flows = demo.Traffic(seed=6).flows(router, demo.FLOWS_PER_DATAGRAM, NOW_MS)
    for exporter, classified in ((router.address, True), (stranger, False)):
        rows = enriched_rows(enrichment, router, flows, exporter)
        assert {bool(row["ExporterSite"]) for row in rows} == {classified}
        assert {bool(row["InIfConnectivity"]) for row in rows} == {classified}
        assert {BOUNDARIES[row["InIfBoundary"]] != BOUNDARIES[0] for row in rows} == {classified}
