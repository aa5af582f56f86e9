"""`waxflow up`: its preflight sees a taken UDP port; its live view reads the Kafka lag from
the outlet's own consumer-lag gauge (summed over partitions) on a real /metrics endpoint, not
from inlet/outlet counters, which disagree after a restart or with a backlog."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from connectors.up import Monitor
from flows.settings import Settings
from tests.conftest import free_port


def test_lag_is_the_outlet_consumer_lag_summed() -> None:
    registry = CollectorRegistry()
    lag = Gauge("waxflow_kafka_consumer_lag", "lag", ["topic", "partition"], registry=registry)
    lag.labels("flows", "0").set(5)
    lag.labels("flows", "1").set(7)
    # a restarted outlet: it read fewer messages than the inlet ever acknowledged, yet has no lag
    Counter("waxflow_outlet_messages", "read", registry=registry).inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        settings = Settings(api={"listen": f"127.0.0.1:{port}"},
                            inlet={"metrics_listen": f"127.0.0.1:{free_port()}"})  # no inlet
        monitor = Monitor(settings)
        assert monitor.update(with_top=False).lag == 12
        lag.labels("flows", "1").set(0)
        assert monitor.update(with_top=False).lag == 5
    finally:
        server.shutdown()
        thread.join(5)


def test_preflight_names_a_taken_udp_listener_port(tmp_path) -> None:
    """port_taken(kind=SOCK_DGRAM), shared with the broker's check, sees a UDP port in use."""
    import socket

    from connectors.up import preflight

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        settings = Settings(inlet={"listeners": [{"name": "nf", "address": "127.0.0.1", "port": port,
                                                  "decoder": "netflow"}],
                                   "metrics_listen": f"127.0.0.1:{free_port()}"},
                            api={"listen": f"127.0.0.1:{free_port()}"}, data_dir=tmp_path)
        problems = preflight(settings, broker_running=True)
        assert problems == [f"UDP port {port} on 127.0.0.1 is taken by another program (inlet.listeners[0].port)"]
    finally:
        holder.close()


def test_preflight_also_runs_the_configuration_checks(tmp_path) -> None:
    """`waxflow up` names what every dataflow would refuse at its start, before starting any."""
    from connectors.up import preflight

    settings = Settings(inlet={"listeners": [{"name": "nf", "address": "192.0.2.77", "port": free_port(),
                                              "decoder": "netflow"}],
                               "metrics_listen": f"127.0.0.1:{free_port()}"},
                        api={"listen": f"127.0.0.1:{free_port()}"}, data_dir="/proc/waxflow-up")
    problems = preflight(settings, broker_running=True)
    assert any(p.startswith("inlet.listeners[0].address: 192.0.2.77 is not an address of this host")
               for p in problems), problems
    assert any(p.startswith("data_dir: /proc/waxflow-up is not a writable directory") for p in problems), problems
