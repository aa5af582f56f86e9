"""The outlet's steps between Kafka and ClickHouse: unwrap envelopes, decode per exporter (each
row tagged with its datagram's Kafka origin, flows/delivery.py), hand the sink its items.

Pure logic and Bytewax operator logic; the clients live in connectors/.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from bytewax.connectors.kafka import KafkaError
from bytewax.operators import StatefulBatchLogic
from cachetools import LRUCache
from prometheus_client import Counter

from flows import envelope
from flows.decode import ExporterState, limits
from flows.decode.decoder import decode_with_origins
from flows.delivery import origin, with_origins
from flows.enrich.metadata import Described
from flows.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)

MESSAGES = Counter("waxflow_outlet_messages_total", "Kafka messages read by the outlet")
DROPPED = Counter("waxflow_outlet_dropped_messages_total",
                  "Kafka messages the outlet could not use, by reason", ["reason"])
FLOWS = Counter("waxflow_outlet_flows_total", "flows decoded by the outlet")
EVICTED = Counter("waxflow_outlet_exporter_evictions_total",
                  "exporters whose decoder state was dropped to keep the process within its bounds "
                  "(flows/decode/limits.py)")

Datagram = tuple[bytes, str, float, int, int]
"""(payload, exporter, receive time, origin, decapsulation mode of its listener)."""
IDLE_EXPORTER = timedelta(hours=1)
"""Decoder state of an exporter silent this long is dropped: state stays bounded as exporters
come and go, and a returning exporter resends its templates."""


def unwrap_messages(messages: list[Any], decapsulation: tuple[int, ...] = ()) -> Iterable[tuple[str, list[Datagram]]]:
    """One Kafka poll → one item per exporter with its datagrams in order; `decapsulation` is
    each listener's mode (flows/decode/frames.DECAPSULATIONS), by listener id.

    Grouping per poll amortizes the per-item cost of the stateful step across datagrams.
    """
    grouped: dict[bytes, list[tuple[bytes, float, int, int]]] = defaultdict(list)
    modes = len(decapsulation)
    for message in messages:
        if isinstance(message, KafkaError):
            DROPPED.labels("kafka_error").inc()
            _ratelimited(logging.WARNING, "kafka", "Kafka error: %s", message.err)
            continue
        MESSAGES.inc()
        try:
            env = envelope.decode(message.value or b"")
        except envelope.EnvelopeError:
            DROPPED.labels("bad_envelope").inc()
            continue
        mode = decapsulation[env.listener_id] if env.listener_id < modes else 0
        grouped[env.exporter].append((env.payload, env.received_ns / 1e9, origin(message.partition, message.offset),
                                      mode))
    # The exporter's text form is made once per exporter and poll, not once per datagram.
    out = []
    for packed, items in grouped.items():
        exporter = envelope.address_text(packed)
        out.append((exporter, [(payload, exporter, received, tag, mode) for payload, received, tag, mode in items]))
    return out


def _now() -> datetime:
    return datetime.now(UTC)


class _LiveStates(LRUCache):
    """id(logic) → (logic, its state's bytes), least recently active first, bounded in bytes
    (cachetools' getsizeof) and, past MAX_EXPORTERS_PER_PROCESS, in count. An evicted logic is
    marked, counted, and drops its state at its next activation or tick."""

    def __init__(self) -> None:
        super().__init__(maxsize=limits.MAX_STATE_BYTES_PER_PROCESS, getsizeof=lambda entry: entry[1])

    def __setitem__(self, key: int, value: tuple[DecodeLogic, int]) -> None:
        super().__setitem__(key, value)
        while len(self) > limits.MAX_EXPORTERS_PER_PROCESS:  # read here: tests lower it
            self.popitem()

    def popitem(self) -> tuple[int, tuple[DecodeLogic, int]]:
        key, entry = super().popitem()
        entry[0].evicted = True
        EVICTED.inc()
        return key, entry


class _Exporters:
    """The decoder states alive in this process (shared by its worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live = _LiveStates()

    def touch(self, logic: DecodeLogic, size: int) -> None:
        with self._lock:
            live = self._live
            live.get(id(logic))  # most recently active first, so that its own growth never evicts it
            # One state over the whole bound is kept alone (every other one evicted), not refused.
            live[id(logic)] = (logic, min(size, live.maxsize))

    def forget(self, logic: DecodeLogic) -> None:
        with self._lock:
            self._live.pop(id(logic), None)

    def __len__(self) -> int:
        return len(self._live)


EXPORTERS = _Exporters()


class DecodeLogic(StatefulBatchLogic[list[Datagram], pa.RecordBatch | None, ExporterState]):
    """Decoder state of one exporter, kept as Bytewax state (snapshotted and recovered).

    Emits one flow batch per activation, and every `tick` a None so the sink can flush a quiet
    stream on time.
    """

    def __init__(self, tick: timedelta, state: ExporterState | None) -> None:
        # Bytewax does not pass the key to the builder: a new state starts with the first datagram.
        self.state = state
        self.tick = tick
        self.next_tick = _now() + tick
        self.last_seen = _now()
        self.evicted = False

    def on_batch(self, values: list[list[Datagram]]) -> tuple[list[pa.RecordBatch | None], bool]:
        datagrams = values[0] if len(values) == 1 else [d for group in values for d in group]
        if self.state is None or self.evicted:
            self.state, self.evicted = ExporterState(datagrams[0][1]), False
        batch, origins = decode_with_origins(self.state, datagrams)
        EXPORTERS.touch(self, self.state.approx_bytes)
        self.last_seen = _now()
        if batch.num_rows:
            FLOWS.inc(batch.num_rows)
            return [with_origins(batch, origins)], False
        return [], False

    def notify_at(self) -> datetime:
        return self.next_tick

    def on_notify(self) -> tuple[list[pa.RecordBatch | None], bool]:
        now = _now()
        self.next_tick = now + self.tick
        if self.evicted or now - self.last_seen > IDLE_EXPORTER:
            EXPORTERS.forget(self)
            return [None], True
        return [None], False

    def on_eof(self) -> tuple[list[pa.RecordBatch | None], bool]:
        return [None], False

    def snapshot(self) -> ExporterState | None:
        return self.state


def decode_builder(tick: timedelta):
    """The `stateful_batch` builder: a new or recovered DecodeLogic for one exporter key."""
    def build(resume: ExporterState | None) -> DecodeLogic:
        return DecodeLogic(tick, resume)

    # Named for Bytewax's error messages and for readers of the dataflow.
    build.__name__ = "decode_exporter"
    return build


def enrich_step(enricher: Callable[[pa.RecordBatch, bool], pa.RecordBatch]
                ) -> Callable[[Described | None], pa.RecordBatch | None]:
    """The enrichment chain over the metadata step's batches, told which are keyed by index;
    ticks (None) pass through."""
    def enrich(described: Described | None) -> pa.RecordBatch | None:
        if described is None:
            return None
        return enricher(described.batch, described.keyed_by_index)

    return enrich


def sink_item(item: tuple[str, pa.RecordBatch | None]) -> tuple[str, tuple[str, pa.RecordBatch | None]]:
    """(exporter, batch) → the same, with the exporter also in the value the sink receives."""
    return item[0], item


__all__ = ["unwrap_messages", "DecodeLogic", "decode_builder", "enrich_step", "sink_item"]
