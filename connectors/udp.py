"""The UDP source of the inlet: every worker owns one socket per listener.

All sockets of a listener, in every worker and every process of the cluster, bind the same
address with SO_REUSEADDR + SO_REUSEPORT and so form one reuseport group; bpf/loader.py
decides how the kernel spreads datagrams over the group.

Each `next_batch` drains up to `inlet.max_batch` datagrams per socket without blocking and
emits one `ReceivedBatch` per socket that had any. Receive time is the kernel's
(SO_TIMESTAMPNS, read from the recvmsg ancillary data) when `timestamp_source: kernel`;
the documented fallback, used when the kernel gives none or `timestamp_source: userspace`,
is the wall clock right after recvmsg returns. The kernel's drop counter (SO_RXQ_OVFL) rides
along with the datagrams as ancillary data too.

A stop request (SIGTERM/SIGINT, see `stop_on_signals`) makes every partition drain what its
sockets already hold, close them and end: the dataflow then completes and the Kafka sink
flushes, so nothing the inlet received is lost on a clean stop.
"""

from __future__ import annotations

import collections
import errno
import logging
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from bpf import loader
from connectors import metrics as metrics_mod
from connectors.cluster import process_id
from connectors.metrics import MAX_EXPORTERS, OTHER_EXPORTERS, InletMetrics
from flows.envelope import DECODER_KINDS, address_bytes, address_text
from flows.settings import Listener

log = logging.getLogger(__name__)

# Linux socket options Python's socket module does not name.
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RXQ_OVFL = 40

MAX_DATAGRAM = 65535             # any UDP payload fits: a full one is never truncated
ANCILLARY_SPACE = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)  # timespec + drop counter
_TIMESPEC = struct.Struct("@qq")
_U32 = struct.Struct("@I")
_STOP_DRAIN_LIMIT = 1_000_000   # on stop: what the socket holds, bounded against a flood


class ListenerError(RuntimeError):
    """A listener that cannot start (its message names the listener and the address)."""


class Datagram(NamedTuple):
    payload: bytes
    exporter: bytes       # 16 bytes, IPv4-mapped for IPv4
    exporter_port: int
    received_ns: int


class ReceivedBatch(NamedTuple):
    """The datagrams one socket delivered in one `next_batch`."""

    listener_id: int
    decoder_kind: int
    datagrams: list[Datagram]


# --- socket setup ----------------------------------------------------------------------------------

def set_receive_buffer(sock: socket.socket, wanted: int) -> tuple[int, bool]:
    """Ask for `wanted` bytes; SO_RCVBUFFORCE (CAP_NET_ADMIN) passes net.core.rmem_max.
    Returns (bytes granted, whether rmem_max capped the request)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    # The kernel doubles the value for its bookkeeping and reports the doubled figure.
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    return granted, granted < wanted


def rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


def enable_kernel_timestamps(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False


def open_listener_socket(listener: Listener) -> socket.socket:
    """A bound, non-blocking UDP socket in the listener's reuseport group."""
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and listener.address == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, mapped
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.bind((listener.address, listener.port))
    except OSError as err:
        sock.close()
        reason = err.strerror or str(err)
        if err.errno == errno.EADDRINUSE:
            reason += " (another program holds this port without SO_REUSEPORT)"
        raise ListenerError(f"listener {listener.name}: cannot bind UDP "
                            f"{listener.address}:{listener.port}: {reason}") from None
    sock.setblocking(False)
    return sock


# --- one socket at run time ------------------------------------------------------------------------

@dataclass
class ListenerSocket:
    """One worker's socket for one listener, with its counters."""

    listener: Listener
    listener_id: int
    sock: socket.socket
    worker: str
    metrics: InletMetrics
    kernel_timestamps: bool
    exporters: dict[str, bytes] = field(default_factory=dict)   # text → 16 bytes, bounded
    kernel_drops_seen: int = 0
    buffer: bytearray = field(default_factory=lambda: bytearray(MAX_DATAGRAM))

    def __post_init__(self) -> None:
        self.view = memoryview(self.buffer)

    def drain(self, limit: int) -> list[Datagram]:
        """Read up to `limit` datagrams without blocking. The per-datagram path is this loop."""
        # recvmsg_into a reused buffer, then one exact-size copy: recvmsg(65535) allocates
        # 64 KiB per datagram and shrinks it, which costs twice as much under load.
        recvmsg_into = self.sock.recvmsg_into
        buffers = [self.buffer]
        view = self.view
        exporters = self.exporters
        now_ns = time.time_ns
        out: list[Datagram] = []
        append = out.append
        empty = truncated = drops = 0
        for _ in range(limit):
            try:
                size, ancillary, flags, source = recvmsg_into(buffers, ANCILLARY_SPACE)
            except BlockingIOError:
                break
            except OSError as err:  # e.g. ICMP errors queued on the socket: count, go on
                self.metrics.discarded.labels(self.listener.name, self.worker,
                                              f"socket_{errno.errorcode.get(err.errno, 'error')}").inc()
                break
            received = 0
            for _level, kind, data in ancillary:
                if kind == SCM_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack(data)
                    received = seconds * 1_000_000_000 + nanoseconds
                elif kind == SO_RXQ_OVFL:
                    drops = _U32.unpack(data)[0]
            if not size:
                empty += 1
                continue
            if flags & socket.MSG_TRUNC:
                truncated += 1
                continue
            payload = view[:size].tobytes()
            host = source[0]
            exporter = exporters.get(host)
            if exporter is None:
                exporter = self._remember(host)
            append(Datagram(payload, exporter, source[1], received or now_ns()))
        self._count(out, empty, truncated, drops)
        return out

    def _remember(self, host: str) -> bytes:
        if len(self.exporters) >= 65536:  # bounded: a spoofed-source flood must not grow it
            self.exporters.clear()
        packed = self.exporters[host] = address_bytes(host)
        return packed

    def _count(self, out: list[Datagram], empty: int, truncated: int, drops: int) -> None:
        m, name, worker = self.metrics, self.listener.name, self.worker
        if out:
            m.datagrams.labels(name, worker).inc(len(out))
            m.bytes.labels(name, worker).inc(sum(len(d.payload) for d in out))
            for exporter, count in collections.Counter(d.exporter for d in out).items():
                m.exporter_datagrams.labels(name, exporter_label(name, exporter)).inc(count)
        if empty:
            m.discarded.labels(name, worker, "empty").inc(empty)
        if truncated:
            m.discarded.labels(name, worker, "truncated").inc(truncated)
        if drops > self.kernel_drops_seen:  # the cumulative count of this socket
            m.kernel_drops.labels(name, worker).inc(drops - self.kernel_drops_seen)
            self.kernel_drops_seen = drops


_exporter_labels: dict[str, dict[bytes, str]] = collections.defaultdict(dict)


def exporter_label(listener: str, exporter: bytes) -> str:
    """The exporter's address as a label, for the first MAX_EXPORTERS of a listener."""
    known = _exporter_labels[listener]
    label = known.get(exporter)
    if label is None:
        label = address_text(exporter) if len(known) < MAX_EXPORTERS else OTHER_EXPORTERS
        known[exporter] = label
    return label


# --- the Bytewax source ----------------------------------------------------------------------------

class UDPPartition(StatelessSourcePartition[ReceivedBatch]):
    def __init__(self, sockets: list[ListenerSocket], max_batch: int,
                 stop: threading.Event) -> None:
        self.sockets = sockets
        self.max_batch = max_batch
        self.stop = stop
        self.closed = False

    def next_batch(self) -> list[ReceivedBatch]:
        if self.closed:
            raise StopIteration
        stopping = self.stop.is_set()
        limit = _STOP_DRAIN_LIMIT if stopping else self.max_batch
        batches = []
        for ls in self.sockets:
            datagrams = ls.drain(limit)
            if datagrams:
                batches.append(ReceivedBatch(ls.listener_id, DECODER_KINDS[ls.listener.decoder],
                                             datagrams))
        if stopping:
            self.close()  # what was drained is emitted; the next call ends the partition
        return batches

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for ls in self.sockets:
                ls.sock.close()


class UDPSource(DynamicSource[ReceivedBatch]):
    """One partition per worker, each with one socket per listener."""

    def __init__(self, listeners: list[Listener], *, balancing: str = "auto",
                 bpffs: Path = Path("/sys/fs/bpf/waxflow"), max_batch: int = 1024,
                 stop: threading.Event | None = None,
                 metrics_listen: str | None = None) -> None:
        self.listeners = listeners
        self.balancing = balancing
        self.bpffs = bpffs
        self.max_batch = max_batch
        self.stop = stop or threading.Event()
        self.metrics_listen = metrics_listen

    def build(self, step_id: str, worker_index: int, worker_count: int) -> UDPPartition:
        metrics = metrics_mod.inlet_metrics()
        if self.metrics_listen:
            host, _, port = self.metrics_listen.rpartition(":")
            metrics_mod.serve(host, int(port) + process_id())
        sockets: list[ListenerSocket] = []
        try:
            for listener_id, listener in enumerate(self.listeners):
                sockets.append(self._open(listener_id, listener, worker_index, worker_count,
                                          metrics))
        except Exception:
            for ls in sockets:
                ls.sock.close()
            raise
        return UDPPartition(sockets, self.max_batch, self.stop)

    def _open(self, listener_id: int, listener: Listener, worker_index: int,
              worker_count: int, metrics: InletMetrics) -> ListenerSocket:
        worker = str(worker_index)
        sock = open_listener_socket(listener)
        try:
            granted, capped = set_receive_buffer(sock, int(listener.receive_buffer))
            metrics.receive_buffer.labels(listener.name, worker).set(granted)
            stamps = listener.timestamp_source == "kernel" and enable_kernel_timestamps(sock)
            key = f"{listener.address}:{listener.port}"
            group = loader.group_for(key, worker_count, self.balancing, self.bpffs)
            mode = group.join(sock, worker_index)
        except Exception:
            sock.close()
            raise
        for each in loader.MODES:
            metrics.balancing.labels(listener.name, each).set(1 if each == mode else 0)
        _announce(listener, worker_count, group, granted, capped,
                  stamps or listener.timestamp_source == "userspace")
        return ListenerSocket(listener, listener_id, sock, worker, metrics, stamps)


_announced: set[str] = set()
_announce_lock = threading.Lock()


def _announce(listener: Listener, workers: int, group: loader.ListenerGroup, granted: int,
              capped: bool, stamps_ok: bool) -> None:
    """One startup line per listener and process: address, balancing, buffer, timestamps."""
    with _announce_lock:
        if listener.name in _announced:
            return
        _announced.add(listener.name)
    why = f" ({group.reason})" if group.reason else ""
    log.info("listener %s on %s:%d: balancing %s over %d workers%s; receive buffer %d bytes",
             listener.name, listener.address, listener.port, group.mode, workers, why, granted)
    if capped:
        log.warning("listener %s: asked for a %d-byte receive buffer, the kernel granted %d "
                    "(net.core.rmem_max = %s; raise it or run with CAP_NET_ADMIN)",
                    listener.name, int(listener.receive_buffer), granted, rmem_max())
    if not stamps_ok:
        log.warning("listener %s: no kernel timestamps (SO_TIMESTAMPNS refused); receive "
                    "times are taken in userspace", listener.name)


# --- clean stop ------------------------------------------------------------------------------------

def stop_on_signals(stop: threading.Event,
                    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """First SIGTERM/SIGINT: drain, flush, exit cleanly. A second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("%s: stopping; draining sockets and flushing Kafka (again to abort)",
                 signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        signal.signal(signum, handler)
