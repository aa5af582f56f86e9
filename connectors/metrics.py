"""Prometheus metrics of the inlet and the HTTP endpoint that serves them.

Hot paths never touch these objects per datagram: they count in plain integers and add the
sums once per batch.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server

log = logging.getLogger(__name__)

# Bounded label sets: listener (configuration), worker (-w × processes), reason (fixed lists
# below and librdkafka's error names), exporter (capped by MAX_EXPORTERS per listener).
MAX_EXPORTERS = 1000
OTHER_EXPORTERS = "other"


class InletMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        p = "waxflow_inlet_"
        self.datagrams = Counter(p + "datagrams", "datagrams received",
                                 ["listener", "worker"], registry=registry)
        self.bytes = Counter(p + "bytes", "datagram payload bytes received",
                             ["listener", "worker"], registry=registry)
        self.exporter_datagrams = Counter(
            p + "exporter_datagrams", f"datagrams received per exporter (the first "
            f"{MAX_EXPORTERS} exporters of a listener, then '{OTHER_EXPORTERS}')",
            ["listener", "exporter"], registry=registry)
        self.kernel_drops = Counter(
            p + "kernel_drops", "datagrams the kernel dropped because the socket buffer was "
            "full (SO_RXQ_OVFL, seen with the next datagram received)",
            ["listener", "worker"], registry=registry)
        self.discarded = Counter(p + "discarded", "datagrams received but not forwarded, by "
                                 "reason (empty, truncated, socket_<errno>)",
                                 ["listener", "worker", "reason"], registry=registry)
        self.receive_buffer = Gauge(p + "receive_buffer_bytes",
                                    "socket receive buffer the kernel granted",
                                    ["listener", "worker"], registry=registry)
        self.balancing = Gauge(p + "balancing_mode", "1 for the active way of spreading a "
                               "listener's datagrams over the workers (ebpf, cbpf, hash)",
                               ["listener", "mode"], registry=registry)
        self.kafka_produced = Counter(p + "kafka_produced", "messages handed to the producer",
                                      ["worker"], registry=registry)
        self.kafka_acked = Counter(p + "kafka_acked", "messages the broker acknowledged",
                                   ["worker"], registry=registry)
        self.kafka_failed = Counter(p + "kafka_failed", "messages that failed delivery, by "
                                    "librdkafka error name", ["worker", "reason"],
                                    registry=registry)
        self.kafka_discarded = Counter(p + "kafka_discarded", "messages not produced, by "
                                       "reason (queue_full with kafka.queue_full: drop, "
                                       "spool_full when the spool reached kafka.spool_max_bytes, "
                                       "shutdown when Kafka stays away at a stop)",
                                       ["worker", "reason"], registry=registry)
        self.kafka_spooled = Counter(p + "kafka_spooled", "messages written to the on-disk spool "
                                     "(producer queue full, or delivery failed), by reason",
                                     ["worker", "reason"], registry=registry)
        self.kafka_replayed = Counter(p + "kafka_replayed", "spooled messages the broker "
                                      "acknowledged on replay", ["worker"], registry=registry)
        self.spool_bytes = Gauge(p + "spool_bytes", "bytes of messages waiting in the spool",
                                 ["worker"], registry=registry)
        self.kafka_queued = Gauge(p + "kafka_queued", "messages waiting in the producer queue",
                                  ["worker"], registry=registry)


_inlet: InletMetrics | None = None
_inlet_lock = threading.Lock()


def inlet_metrics() -> InletMetrics:
    """The process's inlet metrics (created once; every worker thread shares them)."""
    global _inlet
    with _inlet_lock:
        if _inlet is None:
            _inlet = InletMetrics()
        return _inlet


_servers: dict[tuple[str, int], object] = {}


def serve(host: str, port: int) -> bool:
    """Serve /metrics on host:port once per process; False (logged) when the port is taken:
    metrics are worth an error line, not a dead collector."""
    with _inlet_lock:
        if (host, port) in _servers:
            return True
        try:
            _servers[(host, port)] = start_http_server(port, addr=host)
        except OSError as err:
            log.error("metrics: cannot listen on %s:%d: %s; no /metrics from this process",
                      host, port, err.strerror)
            return False
        log.info("metrics: serving http://%s:%d/metrics", host, port)
        return True
