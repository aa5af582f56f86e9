"""The inlet dataflow: receive datagrams, wrap each in an envelope, produce to Kafka.

    python -m bytewax.run flows.inlet -w N        (config: $WAXFLOW_CONFIG or ./dataflows.yaml)

Nothing is decoded here: the inlet must keep up with the routers. Each item moving through the
flow is a batch (the envelopes of the datagrams one socket delivered in one read; the source
writes the envelope header in place as it receives), so Bytewax's per-item cost is paid per
batch, not per datagram.
"""

from __future__ import annotations

import threading

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.config_checks import exit_on_problems
from connectors.kafka import ProducerSink
from connectors.udp import UDPSource, stop_on_signals
from flows import envelope
from flows.settings import Settings
from waxflow.process import dataflow_settings


def build_flow(settings: Settings, stop: threading.Event | None = None) -> Dataflow:
    stop = stop or threading.Event()
    inlet, kafka = settings.inlet, settings.kafka
    flow = Dataflow("inlet")
    received = op.input("receive", flow, UDPSource(
        inlet.listeners, balancing=inlet.balancing, bpffs=inlet.bpffs,
        max_batch=inlet.max_batch, stop=stop, metrics_listen=inlet.metrics_listen))
    op.output("produce", received, ProducerSink(kafka, envelope.topic_name(kafka.topic), stop,
                                                spool_dir=settings.data_dir / "spool" / "inlet"))
    return flow


def main_flow() -> Dataflow:
    """The flow `python -m bytewax.run flows.inlet` runs: configuration from the usual place,
    a clean stop on SIGTERM/SIGINT, logs on stderr."""
    settings = dataflow_settings()
    exit_on_problems(settings, ("kafka", "listeners", "directories"))
    stop = threading.Event()
    stop_on_signals(stop)
    return build_flow(settings, stop)


def __getattr__(name: str) -> Dataflow:
    # `flow` is built when Bytewax asks for it, not at import: importing this module (tests,
    # tools) neither reads the configuration nor installs signal handlers.
    if name == "flow":
        globals()["flow"] = built = main_flow()
        return built
    raise AttributeError(name)
