"""`waxflow up`'s live view reads the Kafka lag from the outlet's own consumer-lag gauge (summed
over partitions) on a real /metrics endpoint, not from inlet/outlet counters, which disagree
after a restart or with a backlog."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from connectors.supervisor import Monitor
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
