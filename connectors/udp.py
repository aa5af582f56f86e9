"""The UDP source of the inlet: every worker owns one socket per listener.

All sockets of a listener, in every worker and every process of the cluster, bind the same
address with SO_REUSEADDR + SO_REUSEPORT and so form one reuseport group; bpf/loader.py
decides how the kernel spreads datagrams over the group.

Each `next_batch` drains up to `inlet.max_batch` datagrams per socket without blocking, with
recvmmsg (connectors/mmsg.py: up to 1024 per system call, straight into preallocated slots
that leave room for the envelope header), and emits one list of finished envelopes per socket
that had any: the one Python object made per datagram is the bytes handed to Kafka. Counters
move once per read. Receive time is the kernel's (SO_TIMESTAMPNS, read from the ancillary
data) when `timestamp_source: kernel`; the documented fallback, used when the kernel gives
none or `timestamp_source: userspace`, is the wall clock right after the read returns (one
value for the datagrams of one read). The kernel's drop counter (SO_RXQ_OVFL) rides along
with the datagrams as ancillary data too.

A stop request (SIGTERM/SIGINT, see `stop_on_signals`) makes every partition drain what its
sockets already hold, close them and end: the dataflow then completes and the Kafka sink
flushes, so nothing the inlet received is lost on a clean stop.
"""

from __future__ import annotations

import collections
import errno
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from bytewax.inputs import DynamicSource, StatelessSourcePartition

from bpf import loader
from connectors import metrics as metrics_mod
from connectors import mmsg
from connectors.cluster import process_id
from connectors.metrics import MAX_EXPORTERS, OTHER_EXPORTERS, InletMetrics
from flows import envelope
from flows.envelope import DECODER_KINDS, address_text
from flows.settings import Listener, split_host_port

log = logging.getLogger(__name__)

# Linux socket options Python's socket module does not name.
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = mmsg.SO_TIMESTAMPNS
SO_RXQ_OVFL = mmsg.SO_RXQ_OVFL

MAX_DATAGRAM = 65535             # any UDP payload fits: a full one is never truncated
RING_SLOTS = 1024                # datagrams per recvmmsg call at most
_STOP_DRAIN_LIMIT = 1_000_000   # on stop: what the socket holds, bounded against a flood
READ_PAUSE = 0.005               # the longest wait between reads (see UDPPartition)
# A receive buffer must not fill during a pause at any rate a worker can keep up with: more
# than bench/inlet.py measures for one worker here (~150-190k datagrams/s), with margin.
WORKER_PEAK_RATE = 500_000       # datagrams/s
# What the kernel charges a receive buffer per datagram beyond its payload (socket buffer
# bookkeeping, allocation rounding up to 2x): an upper bound, so a capacity estimate is low.
_TRUESIZE_OVERHEAD = 512


class ListenerError(RuntimeError):
    """A listener that cannot start (its message names the listener and the address)."""


Envelopes = list[bytes]   # what the source emits: one list per socket and read, ready for Kafka


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
    """One worker's socket for one listener, with its receive ring and counters."""

    listener: Listener
    listener_id: int
    sock: socket.socket
    worker: str
    metrics: InletMetrics
    kernel_timestamps: bool
    group: loader.ListenerGroup
    ring_slots: int = RING_SLOTS
    kernel_drops_seen: int = 0
    mean_length: float = 1500.0   # bytes a datagram, a moving average over reads

    def __post_init__(self) -> None:
        self.fd = self.sock.fileno()
        self.kind = DECODER_KINDS[self.listener.decoder]
        self.ring = mmsg.ReceiveRing(self.ring_slots, envelope.HEADER_SIZE, MAX_DATAGRAM)
        # The kernel's own figure (twice what was granted): what datagrams are charged against.
        self.buffer_bytes = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # This socket's counters, looked up once: labels() takes a lock and a dict lookup.
        m, name, worker = self.metrics, self.listener.name, self.worker
        self._datagrams = m.datagrams.labels(name, worker)
        self._bytes = m.bytes.labels(name, worker)
        self._kernel_drops = m.kernel_drops.labels(name, worker)

    def safe_pause(self) -> float:
        """The longest wait between reads after which this socket's buffer is not yet full at
        WORKER_PEAK_RATE, for datagrams of the size seen lately: READ_PAUSE with the default
        32 MiB buffer; well under a millisecond when net.core.rmem_max caps it (Debian's
        212,992 bytes hold ~100-180 datagrams of 1,400 bytes)."""
        capacity = self.buffer_bytes / (2 * (self.mean_length + _TRUESIZE_OVERHEAD))
        return min(READ_PAUSE, capacity / WORKER_PEAK_RATE)

    def drain(self, limit: int) -> Envelopes:
        """Read up to `limit` datagrams without blocking, as envelopes: the kernel writes each
        datagram into its slot behind room for the header, the headers of the whole read are
        written in one numpy operation, and each envelope is then one copy out of its slot."""
        out: Envelopes = []
        while len(out) < limit:
            wanted = min(self.ring_slots, limit - len(out))
            try:
                got = self.ring.receive(self.fd, wanted)
            except OSError as err:  # e.g. ICMP errors queued on the socket: count, go on
                self._discard(f"socket_{errno.errorcode.get(err.errno, 'error')}", 1)
                break
            if not got:
                break
            out += self._envelopes(got)
            if got < wanted:
                break
        return out

    def _envelopes(self, count: int) -> Envelopes:
        ring = self.ring
        now = time.time_ns()   # the fallback receive time (see the module docstring)
        lengths = ring.lengths(count)
        received, has_time, drops = ring.ancillary(count)
        exporters, ports = ring.sources(count)
        envelope.write_headers(ring.rows[:count], self.kind, self.listener_id,
                               np.where(has_time, received, now) if self.kernel_timestamps
                               else now, exporters, ports)
        starts = ring.starts[:count]
        ends = starts + envelope.HEADER_SIZE + lengths
        keep = (lengths > 0) & ~ring.truncated(count)
        empty = 0
        if not keep.all():   # rare: empty or truncated datagrams are counted and left out
            empty = int((lengths == 0).sum())
            starts, ends, lengths, exporters = starts[keep], ends[keep], lengths[keep], exporters[keep]
        memory = ring.memory
        out = [memory[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
        self._count(lengths, exporters, count - len(out), empty, drops)
        ring.release_large(lengths)
        return out

    def _count(self, lengths: np.ndarray, exporters: np.ndarray, dropped: int, empty: int,
               drops: int) -> None:
        """All counters once per read, not per datagram; the average datagram size too."""
        if len(lengths):
            total = int(lengths.sum())
            self._datagrams.inc(len(lengths))
            self._bytes.inc(total)
            self.mean_length += (total / len(lengths) - self.mean_length) / 4
            name = self.listener.name
            for exporter, count in exporter_counts(exporters):
                self.metrics.exporter_datagrams.labels(
                    name, exporter_label(name, exporter)).inc(count)
        if empty:
            self._discard("empty", empty)
        if dropped > empty:
            self._discard("truncated", dropped - empty)
        if drops > self.kernel_drops_seen:  # the cumulative count of this socket
            self._kernel_drops.inc(drops - self.kernel_drops_seen)
            self.kernel_drops_seen = drops

    def _discard(self, reason: str, count: int) -> None:
        self.metrics.discarded.labels(self.listener.name, self.worker, reason).inc(count)


def exporter_counts(exporters: np.ndarray) -> list[tuple[bytes, int]]:
    """(16-byte address, datagrams) per exporter of a read: (n, 16) uint8 rows."""
    if (exporters == exporters[0]).all():   # the common case, without a sort
        return [(exporters[0].tobytes(), len(exporters))]
    unique, counts = np.unique(exporters.view("V16")[:, 0], return_counts=True)
    return list(zip(unique.tolist(), counts.tolist()))


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

class UDPPartition(StatelessSourcePartition[Envelopes]):
    """One worker's sockets. Reading is paced so that reads stay large without letting a
    receive buffer overflow:

    - after a read, the next one waits for the sockets' `safe_pause` (the shortest of them):
      datagrams gather meanwhile, and each read's fixed cost is shared by many;
    - a read that filled `max_batch` is followed at once by the next;
    - after a read that found nothing, the worker sleeps in poll() until a datagram arrives,
      for READ_PAUSE at most (to see a stop request): an idle worker wakes 200 times a second
      at most, and a burst after silence is met at once instead of after a blind pause.
    """

    def __init__(self, sockets: list[ListenerSocket], max_batch: int,
                 stop: threading.Event, pause: float = READ_PAUSE) -> None:
        self.sockets = sockets
        self.max_batch = max_batch
        self.stop = stop
        self.max_pause = pause
        self.closed = False
        self.idle = False
        self._awake: datetime | None = None
        self._poll = select.poll()
        for ls in sockets:
            self._poll.register(ls.fd, select.POLLIN)

    def next_awake(self) -> datetime | None:
        return self._awake

    def _wake(self) -> datetime:
        """When to read next after a read that did not fill max_batch."""
        pause = min([self.max_pause] + [ls.safe_pause() for ls in self.sockets])
        return datetime.now(UTC) + timedelta(seconds=pause)

    def next_batch(self) -> list[Envelopes]:
        if self.closed:
            raise StopIteration
        stopping = self.stop.is_set()
        if self.idle and not stopping and not self._poll.poll(self.max_pause * 1000):
            # Still nothing. An explicit "now": Bytewax would wait 1 ms after an empty batch.
            self._awake = datetime.now(UTC)
            return []
        limit = _STOP_DRAIN_LIMIT if stopping else self.max_batch
        batches = []
        full = False
        for ls in self.sockets:
            envelopes = ls.drain(limit)
            if envelopes:
                batches.append(envelopes)
                full = full or len(envelopes) == limit
        self.idle = not batches
        if full:
            self._awake = None
        elif batches:
            self._awake = self._wake()
        else:
            self._awake = datetime.now(UTC)   # to poll() at once (see above)
        if stopping:
            self.close()  # what was drained is emitted; the next call ends the partition
        return batches

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for ls in self.sockets:
                ls.sock.close()
            for ls in self.sockets:
                ls.group.release()   # the last socket of the cluster unpins the map


class UDPSource(DynamicSource[Envelopes]):
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
            host, port = split_host_port(self.metrics_listen)
            metrics_mod.serve(host, port + process_id())
        sockets: list[ListenerSocket] = []
        try:
            for listener_id, listener in enumerate(self.listeners):
                sockets.append(self._open(listener_id, listener, worker_index, worker_count,
                                          metrics))
        except Exception:
            UDPPartition(sockets, self.max_batch, self.stop).close()
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
        return ListenerSocket(listener, listener_id, sock, worker, metrics, stamps, group,
                              min(self.max_batch, RING_SLOTS))


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
