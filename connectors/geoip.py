"""GeoIP/ASN database files (MMDB, MaxMind or IPinfo): open, look up, reload when changed.

Each file is copied into an anonymous memory file and read through maxminddb's C extension:
lookups run at C speed, and a file rewritten in place on disk (rather than replaced by a
rename) can never pull the pages from under a running reader. The modification time, size and
inode are checked at most every `check_interval`; a changed file is opened beside the current
one and swapped in only once it opened, so a half-written file keeps the old answers (counted).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import maxminddb
from prometheus_client import Counter

from flows.ratelimit import RateLimitedLog
from flows.settings import ConfigError, GeoIP

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)

RELOADS = Counter("waxflow_geoip_reloads_total", "GeoIP database files reloaded after a change "
                  "on disk", ["database"])
ERRORS = Counter("waxflow_geoip_errors_total", "GeoIP database errors, by reason (reload: a "
                 "changed file did not open, old answers kept; missing: the file went away; "
                 "lookup: an address the reader refused)", ["database", "reason"])

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _open_copy(path: Path) -> maxminddb.Reader:
    """The file's content in a private memory file, opened with the C reader (mmap)."""
    data = path.read_bytes()
    fd = os.memfd_create(f"waxflow-geoip-{path.name}", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        return maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_AUTO)
    finally:
        os.close(fd)  # the reader's mapping keeps the memory alive


class MMDBFile:
    """One MMDB file; `refresh()` reloads it when it changed on disk."""

    def __init__(self, path: Path, check_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.label = self.path.name
        self.check_interval = check_interval
        self.clock = clock
        self.stamp = _stamp(self.path)
        self.reader = _open_copy(self.path)
        self.checked = clock()
        self.lookup_errors = ERRORS.labels(self.label, "lookup")

    def refresh(self) -> bool:
        """True when a new version of the file was loaded."""
        now = self.clock()
        if now - self.checked < self.check_interval:
            return False
        self.checked = now
        try:
            stamp = _stamp(self.path)
        except OSError as err:
            ERRORS.labels(self.label, "missing").inc()
            _ratelimited(logging.WARNING, f"missing {self.path}",
                         "GeoIP: %s: %s; keeping the loaded version", self.path, err.strerror)
            return False
        if stamp == self.stamp:
            return False
        try:
            reader = _open_copy(self.path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as err:
            ERRORS.labels(self.label, "reload").inc()
            _ratelimited(logging.WARNING, f"reload {self.path}",
                         "GeoIP: %s changed but does not open (%s); keeping the loaded version",
                         self.path, err)
            return False
        # The old reader is not closed: another worker thread may be reading it right now; it
        # is freed with its last reference.
        self.reader, self.stamp = reader, stamp
        RELOADS.labels(self.label).inc()
        log.info("GeoIP: reloaded %s", self.path)
        return True

    def get(self, address: Address) -> dict[str, Any] | None:
        try:
            record = self.reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            self.lookup_errors.inc()
            return None
        return record if isinstance(record, dict) else None


class GeoIPDatabases:
    """The configured ASN and geo databases (either list may be empty), shared by the worker
    threads of a process: lookups are read-only, reloads take a lock."""

    def __init__(self, cfg: GeoIP, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        interval = cfg.check_interval.total_seconds()
        self.asn = [self._open(path, f"asn_database[{i}]", interval, clock)
                    for i, path in enumerate(cfg.asn_database)]
        self.geo = [self._open(path, f"geo_database[{i}]", interval, clock)
                    for i, path in enumerate(cfg.geo_database)]

    @staticmethod
    def _open(path: Path, key: str, interval: float, clock: Callable[[], float]) -> MMDBFile:
        try:
            return MMDBFile(path, interval, clock)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as err:
            raise ConfigError(f"enrichment.geoip.{key}: {path}: not a readable MMDB file ({err})") from None

    def __bool__(self) -> bool:
        return bool(self.asn or self.geo)

    def current(self) -> int:
        """Reload the files that changed (looked at every check_interval) and return the
        generation, which grows with every reload: answers cached under another are stale."""
        with self.lock:
            reloaded = [f.refresh() for f in (*self.asn, *self.geo)]
            if any(reloaded):
                self.generation += 1
            return self.generation


def open_geoip(cfg: GeoIP) -> GeoIPDatabases | None:
    """The configured GeoIP databases (None when there are none); a file that does not open
    is a ConfigError naming its key."""
    if not (cfg.asn_database or cfg.geo_database):
        return None
    return GeoIPDatabases(cfg)
