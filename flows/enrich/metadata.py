"""Exporter and interface metadata (names, descriptions, speeds): static configuration first,
then a cache of SNMP answers kept as Bytewax state per exporter.

The cache logic is pure and driven by an injectable clock (wall-clock seconds, so that times
stay meaningful across a restart from a snapshot). The SNMP I/O is a `Poller` handed in from
connectors/snmp.py: `poll()` returns a Future at once, and the step looks at it on its next
activation (a batch, the decode step's ticks, or its own short wake-ups while answers are due),
so a worker never waits on the network.

Per exporter address:
- entries (the exporter's sysName, each ifIndex seen) remember when they were last updated and
  last used; every `cache_check_interval` the ones unused for `cache_duration` are dropped and
  the ones updated before `cache_refresh` are polled again in the background;
- a batch that needs something not cached is held (up to `query_timeout`) while one request
  asks for every missing entry; misses already asked for join that request;
- `breaker_failures` failed polls in a row open a breaker: no polls for `breaker_duration`,
  flows go on with what is known.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Counter, Gauge

from flows.enrich.columns import encode, metadata_blank, replace
from flows.enrich.subnets import SubnetMap
from flows.envelope import address_text
from flows.settings import SNMP, StaticExporter

log = logging.getLogger(__name__)

Clock = Callable[[], float]

HITS = Counter("waxflow_snmp_cache_hits_total", "(exporter, ifIndex) lookups answered by the cache "
               "(once per batch and unique key)")
MISSES = Counter("waxflow_snmp_cache_misses_total", "(exporter, ifIndex) lookups not in the cache "
                 "(once per batch and unique key; the exporter's own name counts as ifIndex 0)")
EXPIRED = Counter("waxflow_snmp_cache_expired_total", "cache entries dropped after cache_duration unused")
REFRESHES = Counter("waxflow_snmp_cache_refreshes_total", "cache entries polled again after cache_refresh")
BREAKER_OPENS = Counter("waxflow_snmp_breaker_opens_total", "times an exporter's breaker opened after "
                        "breaker_failures failed polls in a row")
HELD = Counter("waxflow_snmp_held_flows_total", "flows held waiting for an SNMP answer")
RELEASED = Counter("waxflow_snmp_released_flows_total", "held flows released, by outcome: answered, "
                   "failed (the poll failed), timeout (query_timeout passed), overflow (too many "
                   "rows held for one exporter), queued (needed nothing, waited behind an earlier "
                   "held batch of its exporter)", ["outcome"])
CACHE_SIZE = Gauge("waxflow_snmp_cache_entries", "entries in the SNMP metadata cache "
                   "(exporter names and interfaces) of this process")

SYSTEM = 0
"""In request sets the exporter itself (its sysName) is ifIndex 0, which no interface uses."""
MAX_INTERFACES = 10_000
"""Interfaces cached per exporter: a device sending random ifIndexes cannot grow the cache."""
MAX_HELD_ROWS = 500_000
"""Rows held for one exporter; beyond this the oldest batch goes on without waiting."""
WAKE_UP = 0.05
"""While answers are due, look at them this often (seconds)."""


# --- data the SNMP connector returns ------------------------------------------------------------

@dataclass(frozen=True)
class Interface:
    name: str = ""
    description: str = ""
    speed: int = 0
    """Mbps."""


@dataclass
class PollResult:
    """What one poll learnt; `error` (a reason) when nothing usable came back."""

    system_name: str | None = None
    interfaces: dict[int, Interface] = field(default_factory=dict)
    error: str | None = None


class Poller(Protocol):
    def poll(self, exporter: str, ifindexes: Sequence[int]) -> Future[PollResult]: ...


class CacheStore(Protocol):
    """Where the cache is kept besides Bytewax snapshots: exporter address → its cache as plain
    data (`ExporterCache.to_plain`), which a file holds as JSON: never a pickle, since whoever
    can write the file would run code as the outlet."""

    def load(self) -> dict[bytes, ExporterCache]: ...

    def save(self, caches: dict[bytes, dict]) -> None: ...


# --- static metadata ----------------------------------------------------------------------------

class StaticMetadata:
    """`enrichment.static`: exporter names and interfaces by subnet (most specific wins)."""

    def __init__(self, entries: dict[str, StaticExporter]) -> None:
        self.subnets = SubnetMap(entries)

    def exporter(self, address: bytes) -> StaticExporter | None:
        return self.subnets.lookup(address) if self.subnets else None

    def name(self, address: bytes) -> str | None:
        entry = self.exporter(address)
        return entry.name if entry else None

    def interface(self, address: bytes, ifindex: int) -> Interface | None:
        entry = self.exporter(address)
        found = entry.interfaces.get(ifindex) if entry else None
        return Interface(found.name, found.description, found.speed) if found else None


# --- the cache of one exporter address ----------------------------------------------------------

@dataclass
class Entry:
    value: Interface | str
    updated: float
    accessed: float


@dataclass
class ExporterCache:
    """What is known of one exporter address, with the times that drive expiry and refresh."""

    entries: dict[int, Entry] = field(default_factory=dict)  # SYSTEM → sysName, ifIndex → Interface
    failures: int = 0
    open_until: float = 0.0

    def system_name(self) -> str | None:
        entry = self.entries.get(SYSTEM)
        return entry.value if entry and isinstance(entry.value, str) else None

    def interface(self, ifindex: int) -> Interface | None:
        entry = self.entries.get(ifindex)
        return entry.value if entry and isinstance(entry.value, Interface) else None

    def lookup(self, keys: Iterable[int], now: float) -> list[int]:
        """Mark the cached keys used; return the missing ones."""
        missing = []
        for key in keys:
            entry = self.entries.get(key)
            if entry is None:
                missing.append(key)
            else:
                entry.accessed = now
        return missing

    def store(self, result: PollResult, asked: Iterable[int], now: float) -> int:
        """Keep what a successful poll answered; returns the number of new entries."""
        before = len(self.entries)
        for key in asked:
            value = (result.system_name or "") if key == SYSTEM else result.interfaces.get(key)
            if value is None:
                continue
            old = self.entries.get(key)
            self.entries[key] = Entry(value, now, old.accessed if old else now)
        self.failures = 0
        return len(self.entries) - before

    def fail(self, now: float, cfg: SNMP) -> bool:
        """Count a failed poll; True when this opens the breaker."""
        self.failures += 1
        if self.failures >= cfg.breaker_failures and not self.breaker_open(now):
            self.open_until = now + cfg.breaker_duration.total_seconds()
            return True
        return False

    def breaker_open(self, now: float) -> bool:
        return now < self.open_until

    def expire(self, now: float, unused: float) -> int:
        """Drop entries not used for `unused` seconds; returns how many."""
        old = [key for key, entry in self.entries.items() if now - entry.accessed >= unused]
        for key in old:
            del self.entries[key]
        return len(old)

    def stale(self, now: float, age: float) -> list[int]:
        return [key for key, entry in self.entries.items() if now - entry.updated >= age]

    def to_plain(self) -> dict:
        """JSON-ready data (a copy: the worker goes on changing the cache). The sysName entry
        holds a string, an interface entry [name, description, speed]."""
        entries = [[key, e.value if isinstance(e.value, str) else
                    [e.value.name, e.value.description, e.value.speed], e.updated, e.accessed]
                   for key, e in self.entries.items()]
        return {"entries": entries, "failures": self.failures, "open_until": self.open_until}

    @classmethod
    def from_plain(cls, data: object) -> ExporterCache:
        """The cache `to_plain` gave; ValueError on anything else (a file may be foreign or
        hostile, so every type and bound is checked)."""
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise ValueError("an exporter cache is an object with a list of entries")
        if len(data["entries"]) > MAX_INTERFACES + 1:
            raise ValueError(f"more than {MAX_INTERFACES} interfaces")
        cache = cls(failures=_plain_int(data.get("failures", 0), 2**31),
                    open_until=_plain_time(data.get("open_until", 0.0)))
        for item in data["entries"]:
            if not isinstance(item, list) or len(item) != 4:
                raise ValueError("an entry is [ifIndex, value, updated, accessed]")
            key, value, updated, accessed = item
            key = _plain_int(key, 2**32)
            cache.entries[key] = Entry(_plain_value(key, value), _plain_time(updated), _plain_time(accessed))
        return cache


def _plain_int(value: object, limit: int) -> int:
    if type(value) is not int or not 0 <= value < limit:
        raise ValueError(f"{value!r}: not an integer in [0, {limit})")
    return value


def _plain_time(value: object) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{value!r}: not a time")
    return float(value)


def _plain_value(key: int, value: object) -> Interface | str:
    if key == SYSTEM:
        if not isinstance(value, str):
            raise ValueError("the sysName entry holds a string")
        return value
    if (not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, str) for v in value[:2])):
        raise ValueError("an interface entry holds [name, description, speed]")
    return Interface(value[0], value[1], _plain_int(value[2], 2**32))


# --- batches ------------------------------------------------------------------------------------

class Described(NamedTuple):
    """A flow batch out of the metadata step, what the enrichment step takes (`enricher(*described)`).

    `keyed_by_index`: ExporterName and In/Out IfName, IfDescription, IfSpeed are functions of
    (ExporterAddress, In/OutIfIndex), rows with the same exporter and ifIndex holding the same
    values. The step fills them per unique key and says so when it filled a batch that held none
    of them; classification then keys interfaces on those integers instead of hashing the
    strings of every row."""

    batch: pa.RecordBatch
    keyed_by_index: bool = False

class BatchKeys:
    """The unique (exporter, ifIndex) keys of a batch, found once and used for both the cache
    lookups and the annotation. A key is the exporter's position among the batch's distinct
    addresses and the ifIndex, packed in one uint64 so that Arrow hashes them in one pass."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        positions, unique = encode(batch.column("ExporterAddress"))
        self.addresses: list[bytes] = unique.to_pylist()
        self.positions = positions
        high = positions.astype(np.uint64) << np.uint64(32)
        # side → (row → index of its key among the unique ones, the unique keys)
        self.sides: dict[str, tuple[np.ndarray, list[int]]] = {}
        for side in ("In", "Out"):
            ifindex = batch.column(f"{side}IfIndex").to_numpy(zero_copy_only=False).astype(np.uint64)
            index, keys = encode(pa.array(high | ifindex))
            self.sides[side] = (index, keys.to_pylist())

    def split(self, key: int) -> tuple[bytes, int]:
        return self.addresses[key >> 32], key & 0xFFFFFFFF

    def interfaces(self) -> dict[bytes, set[int]]:
        """Unique ifIndexes (In and Out, 0 excluded) per exporter address."""
        out: dict[bytes, set[int]] = {address: set() for address in self.addresses}
        for _, unique in self.sides.values():
            for key in unique:
                address, ifindex = self.split(key)
                if ifindex:
                    out[address].add(ifindex)
        return out


def annotate(batch: pa.RecordBatch, name_of: Callable[[bytes], str | None],
             interface_of: Callable[[bytes, int], Interface | None],
             keys: BatchKeys | None = None) -> Described:
    """Fill ExporterName and In/Out IfName, IfDescription, IfSpeed from what is known, looking
    each unique (exporter, ifIndex) up once. Unknown values leave the columns as they are.

    A batch that held none of them (as decoded) comes out keyed by index: every value is then a
    function of its exporter and ifIndex, which classification relies on."""
    if batch.num_rows == 0:
        return Described(batch)
    blank = metadata_blank(batch)
    keys = keys or BatchKeys(batch)
    names = [name_of(address) for address in keys.addresses]
    # Over a blank batch, "unknown" and "left as it was" are the same empty value: no if_else.
    if all(names) or (blank and any(names)):
        batch = replace(batch, {"ExporterName": pa.array([n or "" for n in names], pa.string())
                                .take(keys.positions)})
    elif any(names):
        known = pa.array([n or "" for n in names], pa.string()).take(keys.positions)
        batch = replace(batch, {"ExporterName": pc.if_else(pc.equal(known, ""),
                                                           batch.column("ExporterName"), known)})
    for side, (index, unique) in keys.sides.items():
        infos = [interface_of(*keys.split(k)) if k & 0xFFFFFFFF else None for k in unique]
        if not any(infos):
            continue
        rows = pa.array(index)
        known = None if all(infos) or blank else pa.array(np.array([i is not None for i in infos])[index])
        columns = {}
        for column, values, kind in (
                ("IfName", [i.name if i else "" for i in infos], pa.string()),
                ("IfDescription", [i.description if i else "" for i in infos], pa.string()),
                ("IfSpeed", [i.speed if i else 0 for i in infos], pa.uint32())):
            name = f"{side}{column}"
            filled = pa.array(values, kind).take(rows)
            columns[name] = filled if known is None else pc.if_else(known, filled, batch.column(name))
        batch = replace(batch, columns)
    return Described(batch, blank)


# --- the dataflow step --------------------------------------------------------------------------

@dataclass
class Held:
    """A batch waiting for answers: per exporter address, the keys it waits for."""

    batch: pa.RecordBatch
    deadline: float
    waits: dict[bytes, set[int]]
    failed: bool = False


@dataclass
class MetadataState:
    """The Bytewax state of one key (an exporter): snapshotted and recovered."""

    exporters: dict[bytes, ExporterCache] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)
    next_check: float = 0.0


class Metadata:
    """What every key's logic of a process shares: settings, static metadata, poller, clock,
    and the optional cache file (`store`).

    With a store, the caches read at start seed the exporters' new keys (an outlet run without
    recovery keeps what it learnt), and every key publishes its caches at each check; the file
    is rewritten at most once per cache_check_interval.
    """

    def __init__(self, cfg: SNMP, static: dict[str, StaticExporter], poller: Poller | None,
                 clock: Clock = time.time, store: CacheStore | None = None) -> None:
        self.cfg = cfg
        self.static = StaticMetadata(static)
        self.poller = poller if cfg.enabled else None
        self.clock = clock
        self.store = store if self.poller is not None else None
        self._lock = threading.Lock()  # worker threads share the seeds and the published caches
        self._seeds = self.store.load() if self.store else {}
        self._published: dict[bytes, dict] = {}
        self._saved_at = clock()

    @property
    def active(self) -> bool:
        return self.poller is not None or bool(self.static.subnets)

    def seed(self, address: bytes) -> ExporterCache | None:
        """The cache of an exporter read from the store, once."""
        with self._lock:
            return self._seeds.pop(address, None)

    def publish(self, caches: dict[bytes, ExporterCache], dropped: Iterable[bytes], now: float) -> None:
        """A key's caches as of its check; the store is rewritten when one interval has passed."""
        if self.store is None:
            return
        with self._lock:
            for address, cache in caches.items():
                self._published[address] = cache.to_plain()
            for address in dropped:
                self._published.pop(address, None)
            if now - self._saved_at < self.cfg.cache_check_interval.total_seconds():
                return
            self._saved_at = now
            # Seeds nobody claimed (exporters now handled elsewhere, or silent) are kept until
            # they would have expired.
            unused = self.cfg.cache_duration.total_seconds()
            self._seeds = {a: c for a, c in self._seeds.items()
                           if any(now - e.accessed < unused for e in c.entries.values())}
            everything = {**{a: c.to_plain() for a, c in self._seeds.items()}, **self._published}
        self.store.save(everything)


class MetadataLogic(StatefulBatchLogic[pa.RecordBatch | None, Described | None, MetadataState]):
    """Metadata of one exporter key: annotates its batches, holding those that wait for SNMP."""

    def __init__(self, shared: Metadata, state: MetadataState | None) -> None:
        self.shared = shared
        self.cfg = shared.cfg
        now = shared.clock()
        self.state = state or MetadataState(next_check=now + self.cfg.cache_check_interval.total_seconds())
        # In-flight polls (not snapshotted): address → [(future, keys asked)].
        self.requests: dict[bytes, list[tuple[Future[PollResult], set[int]]]] = {}
        if state is not None:
            CACHE_SIZE.inc(sum(len(c.entries) for c in state.exporters.values()))
            # Answers awaited before the restart are asked again, with a fresh deadline.
            for held in state.held:
                held.deadline = now + self.cfg.query_timeout.total_seconds()
                for address, keys in held.waits.items():
                    self._ask(address, keys, now)

    # --- Bytewax callbacks ---

    def on_batch(self, values: list[pa.RecordBatch | None]) -> tuple[list[Described | None], bool]:
        now = self.shared.clock()
        self._collect(now)
        out: list[Described | None] = list(self._release(now))
        for batch in values:
            if batch is not None:
                out.extend(self._admit(batch, now))
        out.extend(self._release(now))  # a queued batch an overflow brought to the front
        if any(batch is None for batch in values):
            out.append(None)  # the decode step's tick goes on to the sink
        return out, False

    def on_notify(self) -> tuple[list[Described], bool]:
        now = self.shared.clock()
        self._collect(now)
        out = self._release(now)
        if now >= self.state.next_check:
            self.check(now)
        idle = not self.state.exporters and not self.state.held and not self.requests
        return out, idle

    def on_eof(self) -> tuple[list[Described], bool]:
        now = self.shared.clock()
        self._collect(now)
        return self._release(now, flush=True), False

    def notify_at(self) -> datetime:
        at = self.state.next_check
        if self.state.held:
            at = min(at, min(held.deadline for held in self.state.held))
        if self.requests:
            at = min(at, self.shared.clock() + WAKE_UP)
        return datetime.fromtimestamp(at, UTC)

    def snapshot(self) -> MetadataState:
        return self.state

    # --- the cache ---

    def _cache(self, address: bytes) -> ExporterCache:
        cache = self.state.exporters.get(address)
        if cache is None:
            cache = self.shared.seed(address) or ExporterCache()
            CACHE_SIZE.inc(len(cache.entries))
            self.state.exporters[address] = cache
        return cache

    def _needed(self, address: bytes, ifindexes: set[int]) -> set[int]:
        """Keys SNMP must answer for this exporter: what static metadata does not give."""
        entry = self.shared.static.exporter(address)
        if entry is None:
            return ifindexes | {SYSTEM}
        return {i for i in ifindexes if i not in entry.interfaces}

    def _admit(self, batch: pa.RecordBatch, now: float) -> list[Described]:
        """Annotate a batch now, or hold it while its missing keys are asked for."""
        if self.shared.poller is None:
            return [self._annotate(batch)]
        keys = BatchKeys(batch)
        waits: dict[bytes, set[int]] = {}
        for address, ifindexes in keys.interfaces().items():
            needed = self._needed(address, ifindexes)
            if not needed:
                continue
            cache = self._cache(address)
            missing = cache.lookup(needed, now)
            HITS.inc(len(needed) - len(missing))
            if not missing:
                continue
            MISSES.inc(len(missing))
            if cache.breaker_open(now) or len(cache.entries) >= MAX_INTERFACES:
                continue
            self._ask(address, set(missing), now)
            waits[address] = set(missing)
        if not waits and not self.state.held:
            return [self._annotate(batch, keys)]
        # An exporter's batches leave in the order they came, a batch that needs nothing waiting
        # behind an earlier one that waits: the sink's exactly-once marks rely on that order.
        HELD.inc(batch.num_rows)
        self.state.held.append(Held(batch, now + self.cfg.query_timeout.total_seconds(), waits))
        return self._overflow()

    def _pending(self, address: bytes) -> set[int]:
        return set().union(*(keys for _, keys in self.requests.get(address, [])))

    def _ask(self, address: bytes, keys: set[int], now: float) -> None:
        """One request for the keys not already asked for (concurrent misses coalesce)."""
        new = keys - self._pending(address)
        if not new or self.shared.poller is None:
            return
        if self._cache(address).breaker_open(now):
            return
        future = self.shared.poller.poll(address_text(address), sorted(new - {SYSTEM}))
        self.requests.setdefault(address, []).append((future, new))

    def _collect(self, now: float) -> None:
        """Take in the answers that arrived."""
        for address in list(self.requests):
            waiting = []
            for future, keys in self.requests[address]:
                if not future.done():
                    waiting.append((future, keys))
                    continue
                try:
                    result = future.result()
                except Exception:  # the poller's loop is gone (process stopping): a failed poll
                    result = PollResult(error="other")
                cache = self._cache(address)
                if result.error:
                    if cache.fail(now, self.cfg):
                        BREAKER_OPENS.inc()
                        log.warning("SNMP breaker open for %s after %d failed polls",
                                    address_text(address), cache.failures)
                    for held in self.state.held:
                        if held.waits.get(address, set()) & keys:
                            held.failed = True
                else:
                    CACHE_SIZE.inc(cache.store(result, keys, now))
            if waiting:
                self.requests[address] = waiting
            else:
                del self.requests[address]

    def check(self, now: float) -> None:
        """Every cache_check_interval: drop unused entries, poll again the old ones."""
        self.state.next_check = now + self.cfg.cache_check_interval.total_seconds()
        dropped = []
        for address in list(self.state.exporters):
            cache = self.state.exporters[address]
            expired = cache.expire(now, self.cfg.cache_duration.total_seconds())
            if expired:
                EXPIRED.inc(expired)
                CACHE_SIZE.dec(expired)
            if not cache.entries and not cache.breaker_open(now) and address not in self.requests:
                del self.state.exporters[address]
                dropped.append(address)
                continue
            stale = set(cache.stale(now, self.cfg.cache_refresh.total_seconds())) - self._pending(address)
            if stale and self.shared.poller is not None and not cache.breaker_open(now):
                REFRESHES.inc(len(stale))
                self._ask(address, stale, now)
        self.shared.publish(self.state.exporters, dropped, now)

    # --- holding and releasing ---

    def _release(self, now: float, flush: bool = False) -> list[Described]:
        """The held batches that may go, oldest first, up to the first that still waits."""
        out: list[Described] = []
        held_list = self.state.held
        while held_list:
            held = held_list[0]
            waiting = any(held.waits[a] & self._pending(a) for a in held.waits)
            if waiting and now < held.deadline and not flush:
                break
            held_list.pop(0)
            outcome = ("timeout" if waiting else "failed" if held.failed
                       else "answered" if held.waits else "queued")
            RELEASED.labels(outcome).inc(held.batch.num_rows)
            out.append(self._annotate(held.batch))
        return out

    def _overflow(self) -> list[Described]:
        out = []
        while sum(h.batch.num_rows for h in self.state.held) > MAX_HELD_ROWS and len(self.state.held) > 1:
            held = self.state.held.pop(0)
            RELEASED.labels("overflow").inc(held.batch.num_rows)
            out.append(self._annotate(held.batch))
        return out

    def _annotate(self, batch: pa.RecordBatch, keys: BatchKeys | None = None) -> Described:
        if not self.shared.active:
            return Described(batch)
        static = self.shared.static
        exporters = self.state.exporters

        def name_of(address: bytes) -> str | None:
            cached = exporters.get(address)
            return static.name(address) or (cached.system_name() if cached else None)

        def interface_of(address: bytes, ifindex: int) -> Interface | None:
            cached = exporters.get(address)
            return static.interface(address, ifindex) or (cached.interface(ifindex) if cached else None)

        return annotate(batch, name_of, interface_of, keys)


def metadata_builder(shared: Metadata) -> Callable[[MetadataState | None], MetadataLogic]:
    """The `stateful_batch` builder: a new or recovered MetadataLogic for one exporter key."""
    def build(resume: MetadataState | None) -> MetadataLogic:
        return MetadataLogic(shared, resume)

    build.__name__ = "exporter_metadata"
    return build


__all__ = ["Interface", "PollResult", "Poller", "CacheStore", "StaticMetadata", "ExporterCache", "Metadata",
           "Described", "MetadataLogic", "MetadataState", "metadata_builder", "annotate", "BatchKeys"]
