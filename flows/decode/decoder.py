"""The decode entry points: FlowDecoder (state for many exporters) and decode_many (one
exporter's state), both turning a sequence of datagrams into one flow RecordBatch.

A call queues every datagram and decodes at the end: NetFlow v9/IPFIX messages are walked
together with numpy (netflow.walk_netflow), NetFlow v5 and sFlow datagrams in a short Python
walk each; then all records of one template (and all v5 and sFlow records) are decoded
together, so the numpy and Arrow work is per call, not per datagram or set.
Nothing raises out of a call: malformed input is counted (metrics.REASONS) and skipped, and the
rest of the datagram is decoded where the structure allows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from cachetools import LRUCache

from flows.decode import limits, metrics
from flows.decode.callbacks import Piece, V5Datagram
from flows.decode.columns import ORIGIN, assemble
from flows.decode.frames import NONE
from flows.decode.netflow import NetflowQueue, apply_options, walk_netflow
from flows.decode.records import flow_columns
from flows.decode.sflow import SflowQueue
from flows.decode.state import MAX_TEMPLATES, ExporterState
from flows.decode.v5 import v5_columns, walk_v5

log = logging.getLogger(__name__)
MAX_EXPORTERS = 4096
Datagram = tuple[bytes, str, float]

_KIND = {5: "netflow_v5", 9: "netflow_v9", 10: "ipfix"}


class _TemplateGroup:
    """The records of one template queued within a call, as pieces (records, export ms,
    sysUptime ms, receive s, origin, decapsulation mode): one piece per template and segment of the walk, or per set for
    the rare sets decoded on their own (variable-length records, data held for its template)."""

    __slots__ = ("state", "version", "domain", "pieces")

    def __init__(self, state: ExporterState, version: int, domain: int) -> None:
        self.state, self.version, self.domain = state, version, domain
        self.pieces: list[Piece] = []


class Chunk:
    """Datagrams queued during one call, decoded together by finish(). The walkers call it
    back through callbacks.ChunkCallbacks (data_set, group, v5)."""

    def __init__(self) -> None:
        self.groups: dict[object, _TemplateGroup] = {}
        self.netflow = NetflowQueue()
        self.v5: list[V5Datagram] = []
        self.sflow = SflowQueue()
        # Datagram counts go to the metrics once per call: a Prometheus inc() takes a lock.
        self.datagrams = {"netflow_v5": 0, "sflow_v5": 0}

    def add(self, state: ExporterState, payload: bytes, received: float, origin: int = 0,
            decapsulation: int = NONE) -> None:
        """Queue one datagram (any version); never raises. `origin` is an opaque number carried to
        every row this datagram's decoding emits (the outlet's delivery tag, see flows/delivery.py):
        its own records, and held records its templates release. `decapsulation`: the tunnel
        whose inner packets are the flows (frames.DECAPSULATIONS; the listener's setting)."""
        try:
            if len(payload) < 4:
                metrics.error("truncated")
                return
            version = (payload[0] << 8) | payload[1]
            if version == 9 or version == 10:
                netflow = self.netflow
                netflow.payloads.append(payload)
                netflow.states.append(state)
                netflow.received.append(received)
                netflow.origins.append(origin)
                netflow.decapsulation.append(decapsulation)
            elif version == 5:
                self.datagrams["netflow_v5"] += 1
                walk_v5(self, state, payload, received, origin)
            elif version == 0 and payload[2:4] == b"\x00\x05":
                self.datagrams["sflow_v5"] += 1
                self.sflow.add(payload, received, origin, decapsulation)
            else:
                metrics.error("unknown_version")
        except Exception:  # a decoder bug must not stop the dataflow: count it, keep going
            metrics.error("malformed")
            log.debug("undecodable datagram from %s", state.exporter, exc_info=True)

    def data_set(self, state: ExporterState, key: tuple, body: bytes, meta: tuple,
                 received: float | None, most: int = limits.MAX_ROWS_PER_DATAGRAM) -> int:
        """Decode one v9/IPFIX data set on its own (or hold it until its template comes): at
        most `most` records (what is left of its datagram's budget): how many it queued or, for
        options data, read."""
        template = state.templates.get(key)
        if template is None:
            metrics.error("missing_template")
            if received is not None:
                state.hold(key, body, meta, received)
            return 0
        if most <= 0:
            metrics.error("limit")
            return 0
        if template.options:
            return apply_options(state, template, key[0], key[1], body, most)
        records, count = template.records(body, most)
        if not count:
            return 0
        meta = (*meta, NONE) if len(meta) == 4 else meta  # (held in a snapshot from before decapsulation)
        export_ms, uptime, received_s, origin, decapsulation = (np.full(count, value, np.int64) for value in meta)
        self.group(state, template, key[0], key[1]).pieces.append(
            (template.view(records), export_ms, uptime, received_s, origin, decapsulation))
        return count

    def group(self, state: ExporterState, template, version: int, domain: int) -> _TemplateGroup:
        """The queue of the template's records in this call."""
        group = self.groups.get(template)
        if group is None:
            group = self.groups[template] = _TemplateGroup(state, version, domain)
        return group

    def finish(self) -> pa.RecordBatch:
        return self.finish_with_origins()[0]

    def finish_with_origins(self) -> tuple[pa.RecordBatch, np.ndarray]:
        """The flow batch, and per row the origin of the datagram that emitted it."""
        if self.netflow.payloads:
            _guarded(walk_netflow, self.netflow, self)
        parts = []
        for template, group in self.groups.items():
            parts.extend(_guarded(_template_parts, template, group))
        if self.v5:
            parts.extend(_guarded(lambda: [v5_columns(self.v5)]))
            metrics.FLOWS_BY_KIND["netflow_v5"].inc(sum(s[1] for s in self.v5))
        if self.sflow.payloads:
            parts.extend(_guarded(self.sflow.parts))
        for kind, count in self.datagrams.items():
            if count:
                metrics.DATAGRAMS_BY_KIND[kind].inc(count)
        return assemble(parts), _origins(parts)


def _origins(parts: list) -> np.ndarray:
    """The parts' origin columns end to end, in the order assemble() puts their rows."""
    pieces = [np.asarray(cols.get(ORIGIN, np.zeros(n, np.int64)), np.int64) for n, cols in parts if n]
    if not pieces:
        return np.zeros(0, np.int64)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _guarded(function, *args) -> list:
    try:
        return function(*args)
    except Exception:
        metrics.error("malformed")
        log.debug("undecodable records", exc_info=True)
        return []


def _template_parts(template, group: _TemplateGroup) -> list:
    state, version, domain = group.state, group.version, group.domain
    pieces = group.pieces
    if len(pieces) == 1:
        view, export_ms, uptime_ms, received, origin, decapsulation = pieces[0]
    else:
        joined = (np.concatenate(column) for column in zip(*pieces))
        view, export_ms, uptime_ms, received, origin, decapsulation = joined
    ctx = {
        "version": version,
        "exporter": state.address,
        "export_ms": export_ms,
        "uptime_ms": uptime_ms,
        "received": received.astype(np.uint32),
        "origin": origin,
        "domain_rate": state.domain_rates.get((version, domain), 0),
        "sampler_rates": {k[2]: r for k, r in state.sampler_rates.items() if k[:2] == (version, domain)},
        "system_init_ms": state.system_init_ms.get((version, domain)),
        "decapsulation": decapsulation if decapsulation.any() else None,
    }
    parts = flow_columns(template, view, ctx)
    metrics.FLOWS_BY_KIND[_KIND[version]].inc(sum(n for n, _ in parts))
    return parts


def decode_many(state: ExporterState, datagrams: Iterable[Datagram]) -> pa.RecordBatch:
    """Decode datagrams of ONE exporter with its state (the outlet keeps one state per key).

    `datagrams` are (payload, exporter, received) like FlowDecoder's; the exporter field is
    not looked at: the state says who the exporter is.
    """
    chunk = Chunk()
    for payload, _, received in datagrams:
        chunk.add(state, payload, received)
    return chunk.finish()


def decode_with_origins(state: ExporterState, datagrams: Iterable[tuple]) -> tuple[pa.RecordBatch, np.ndarray]:
    """As decode_many for datagrams given as (payload, exporter, received, origin[, decapsulation
    mode]): the flow batch, and per row the origin of the datagram whose decoding emitted it."""
    chunk = Chunk()
    for datagram in datagrams:
        chunk.add(state, datagram[0], datagram[2], datagram[3], datagram[4] if len(datagram) > 4 else NONE)
    return chunk.finish_with_origins()


class _CountedLRU(LRUCache):
    """An LRU cache whose evictions are counted (waxflow_decode_exporter_evictions)."""

    def popitem(self):
        evicted = super().popitem()
        metrics.EXPORTER_EVICTIONS.inc()
        return evicted


class FlowDecoder:
    """Decodes datagrams from many exporters, keeping one bounded ExporterState per exporter.

    Bytes semantics: `Bytes` is the L3 length (IP header and payload, no link layer) as
    NetFlow and IPFIX export it; for sFlow it is the sampled packet's IP total length (or,
    when the header record lacks it, the frame length less the link-layer header and the
    stripped bytes), so all formats agree. Bytes and Packets are not multiplied by
    SamplingRate (0 when the exporter did not say).
    """

    def __init__(self, max_exporters: int = MAX_EXPORTERS, max_templates: int = MAX_TEMPLATES) -> None:
        self.max_exporters = max_exporters
        self.max_templates = max_templates
        # Bounded in count: each state is bounded in bytes itself (flows/decode/state.py).
        self.states: LRUCache[str, ExporterState] = _CountedLRU(max_exporters)

    def state(self, exporter: str) -> ExporterState:
        """The exporter's state, created on first use; the least recently used one is evicted."""
        state = self.states.get(exporter)
        if state is None:
            state = self.states[exporter] = ExporterState(exporter, self.max_templates)
        return state

    def decode_many(self, datagrams: Iterable[Datagram], decapsulation: int = NONE) -> pa.RecordBatch:
        """Decode a sequence of (payload, exporter, received) into one flow batch (the inner
        packets of `decapsulation` tunnels as the flows, frames.DECAPSULATIONS)."""
        chunk = Chunk()
        last_exporter, state = None, None
        for payload, exporter, received in datagrams:
            if exporter != last_exporter:
                state, last_exporter = self.state(exporter), exporter
            chunk.add(state, payload, received, 0, decapsulation)
        return chunk.finish()

    def decode(self, payload: bytes, exporter: str, received: float | None = None) -> pa.RecordBatch:
        """Decode one datagram (received defaults to now)."""
        return self.decode_many([(payload, exporter, time.time() if received is None else received)])
