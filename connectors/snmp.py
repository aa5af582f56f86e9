"""SNMP poller: exporter and interface names and speeds, asked of the exporters themselves.

pysnmp 7's asyncio API runs in one background event-loop thread per process; the dataflow's
workers hand it requests with `SNMPPoller.poll()` and get a concurrent Future back, so a worker
never waits on the network. What is asked, per exporter: sysName, and per ifIndex ifName,
ifDescr, ifAlias, ifHighSpeed and ifSpeed (one GET for several interfaces at once).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from prometheus_client import Counter
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import errind
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from connectors.cluster import process_id
from flows.enrich.metadata import ExporterCache, Interface, PollResult
from flows.enrich.subnets import SubnetMap
from flows.envelope import address_bytes
from flows.ratelimit import RateLimitedLog
from flows.settings import SNMP, SNMPCredentials

log = logging.getLogger(__name__)
_ratelimited = RateLimitedLog(log)

REQUESTS = Counter("waxflow_snmp_requests_total", "SNMP GET requests sent (each community or "
                   "credential tried counts once)")
ERRORS = Counter("waxflow_snmp_errors_total", "SNMP polls that failed, by reason (timeout, auth, "
                 "agent_error, other)", ["reason"])
ERROR_REASONS = ("timeout", "auth", "agent_error", "other")
CACHE_FILE_ERRORS = Counter("waxflow_snmp_cache_file_errors_total", "SNMP cache file reads or "
                            "writes that failed, by operation (load, save)", ["operation"])

SYS_NAME = "1.3.6.1.2.1.1.5.0"
IF_DESCR = "1.3.6.1.2.1.2.2.1.2"
IF_SPEED = "1.3.6.1.2.1.2.2.1.5"
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_HIGH_SPEED = "1.3.6.1.2.1.31.1.1.1.15"
IF_ALIAS = "1.3.6.1.2.1.31.1.1.1.18"
INTERFACE_COLUMNS = (IF_NAME, IF_DESCR, IF_ALIAS, IF_HIGH_SPEED, IF_SPEED)
INTERFACES_PER_GET = 8
"""41 variables per GET: the answer stays within one ordinary datagram for typical names."""

_AUTH = {
    "none": hlapi.usmNoAuthProtocol,
    "md5": hlapi.usmHMACMD5AuthProtocol,
    "sha": hlapi.usmHMACSHAAuthProtocol,
    "sha224": hlapi.usmHMAC128SHA224AuthProtocol,
    "sha256": hlapi.usmHMAC192SHA256AuthProtocol,
    "sha384": hlapi.usmHMAC256SHA384AuthProtocol,
    "sha512": hlapi.usmHMAC384SHA512AuthProtocol,
}
_PRIV = {
    "none": hlapi.usmNoPrivProtocol,
    "des": hlapi.usmDESPrivProtocol,
    "3des": hlapi.usm3DESEDEPrivProtocol,
    "aes": hlapi.usmAesCfb128Protocol,
    "aes192": hlapi.usmAesBlumenthalCfb192Protocol,
    "aes256": hlapi.usmAesBlumenthalCfb256Protocol,
    "aes192c": hlapi.usmAesCfb192Protocol,
    "aes256c": hlapi.usmAesCfb256Protocol,
}
_AUTH_ERRORS = (errind.UnknownUserName, errind.WrongDigest, errind.DecryptionError,
                errind.AuthenticationError, errind.AuthenticationFailure, errind.UnknownEngineID,
                errind.NotInTimeWindow, errind.UnsupportedSecurityLevel, errind.UnknownSecurityName,
                errind.NoEncryption, errind.EncryptionError, errind.UnknownCommunityName)
_DEFAULT_CREDENTIALS = SNMPCredentials(subnet="::/0")


class SNMPError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (NoSuchObject, NoSuchInstance, EndOfMibView)):
        return None
    return bytes(value).decode("utf-8", "replace").strip("\x00 ")


def _number(value: Any) -> int | None:
    if value is None or isinstance(value, (NoSuchObject, NoSuchInstance, EndOfMibView)):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def interface_from(values: dict[str, Any], index: int) -> Interface:
    """ifName (else ifDescr) as the name, ifAlias (else ifDescr) as the description, ifHighSpeed
    in Mbps (else ifSpeed in bit/s, which saturates at 4.3 Gbps)."""
    name, descr, alias = (_text(values.get(f"{c}.{index}")) for c in (IF_NAME, IF_DESCR, IF_ALIAS))
    high, speed = (_number(values.get(f"{c}.{index}")) for c in (IF_HIGH_SPEED, IF_SPEED))
    mbps = high if high else (speed or 0) // 1_000_000
    return Interface(name or descr or "", alias or descr or "", min(mbps, 2**32 - 1))


class SNMPPoller:
    """One per process, shared by every worker thread; requests run on its own event loop."""

    def __init__(self, cfg: SNMP) -> None:
        self.cfg = cfg
        self.credentials = SubnetMap({c.subnet: c for c in cfg.credentials})
        # The community that last answered an exporter is tried first next time.
        self._working: LRUCache[str, int] = LRUCache(maxsize=100_000)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="snmp-poller",
                                        daemon=True)
        self._thread.start()
        self._engine = asyncio.run_coroutine_threadsafe(self._make_engine(), self._loop).result(30)
        self._slots = asyncio.run_coroutine_threadsafe(self._make_slots(), self._loop).result(30)

    async def _make_engine(self) -> hlapi.SnmpEngine:
        return hlapi.SnmpEngine()

    async def _make_slots(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.cfg.max_concurrent)

    def close(self) -> None:
        """Stop the event loop (tests; a running outlet keeps its poller until exit)."""
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._engine.close_dispatcher()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def credentials_for(self, exporter: str) -> SNMPCredentials:
        return self.credentials.lookup(address_bytes(exporter)) or _DEFAULT_CREDENTIALS

    def poll(self, exporter: str, ifindexes: Sequence[int]) -> Future[PollResult]:
        """Ask `exporter` for its sysName and these interfaces; never raises, the Future's
        result says what failed."""
        return asyncio.run_coroutine_threadsafe(self._poll(exporter, list(ifindexes)), self._loop)

    async def _poll(self, exporter: str, ifindexes: list[int]) -> PollResult:
        creds = self.credentials_for(exporter)
        try:
            async with self._slots:
                return await self._poll_with(creds, exporter, ifindexes)
        except SNMPError as err:
            ERRORS.labels(err.reason).inc()
            _ratelimited(logging.WARNING, err.reason, "SNMP poll of %s failed (%s): %s",
                         exporter, err.reason, err)
            return PollResult(error=err.reason)
        except Exception as err:  # pysnmp raises for many local conditions; never lose the worker
            ERRORS.labels("other").inc()
            _ratelimited(logging.WARNING, "other", "SNMP poll of %s failed: %r", exporter, err)
            return PollResult(error="other")

    async def _poll_with(self, creds: SNMPCredentials, exporter: str,
                         ifindexes: list[int]) -> PollResult:
        target = await self._target(creds, exporter)
        values: dict[str, Any] = {}
        chunks = [ifindexes[i:i + INTERFACES_PER_GET]
                  for i in range(0, len(ifindexes), INTERFACES_PER_GET)] or [[]]
        for number, chunk in enumerate(chunks):
            oids = [f"{column}.{index}" for index in chunk for column in INTERFACE_COLUMNS]
            if number == 0:
                oids.insert(0, SYS_NAME)
            values.update(await self._get(creds, exporter, target, oids))
        return PollResult(system_name=_text(values.get(SYS_NAME)),
                          interfaces={i: interface_from(values, i) for i in ifindexes})

    async def _target(self, creds: SNMPCredentials, exporter: str):
        address = creds.agent_address or exporter
        kind = (hlapi.Udp6TransportTarget if ipaddress.ip_address(address).version == 6
                else hlapi.UdpTransportTarget)
        return await kind.create((address, creds.port), timeout=self.cfg.timeout.total_seconds(),
                                 retries=self.cfg.retries)

    def _auths(self, creds: SNMPCredentials, exporter: str) -> list[tuple[int, Any]]:
        if creds.version == "3":
            return [(0, hlapi.UsmUserData(
                creds.user, authKey=creds.auth_password, privKey=creds.priv_password,
                authProtocol=_AUTH[creds.auth_protocol], privProtocol=_PRIV[creds.priv_protocol]))]
        order = list(range(len(creds.communities)))
        first = self._working.get(exporter, 0)
        if first < len(order):
            order.insert(0, order.pop(first))
        return [(i, hlapi.CommunityData(creds.communities[i], mpModel=1)) for i in order]

    async def _get(self, creds: SNMPCredentials, exporter: str, target,
                   oids: list[str]) -> dict[str, Any]:
        """One GET; SNMPv2c communities are tried in order until one answers (a wrong community
        gets no answer at all, so each costs a timeout)."""
        context = hlapi.ContextData(contextName=creds.context) if creds.context else hlapi.ContextData()
        error: SNMPError | None = None
        for index, auth in self._auths(creds, exporter):
            REQUESTS.inc()
            indication, status, _, var_binds = await hlapi.get_cmd(
                self._engine, auth, target, context,
                *(hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in oids), lookupMib=False)
            if indication is None and not status:
                self._working[exporter] = index
                return {str(name): value for name, value in var_binds}
            error = _classify(indication, status)
            if error.reason != "timeout":
                break
        assert error is not None
        raise error


def snmp_poller(cfg: SNMP) -> SNMPPoller | None:
    """The process's poller when SNMP is enabled."""
    return SNMPPoller(cfg) if cfg.enabled else None


CACHE_FILE_VERSION = 1
"""The cache file's format: {"version": 1, "exporters": {address as hex: ExporterCache.to_plain()}}.
A file of another version is ignored (the cache fills again from SNMP)."""
MAX_CACHE_FILE_BYTES = 512 * 1024 * 1024
"""A larger file is not read: it cannot come from MAX_INTERFACES per exporter of real names."""


class CacheFile:
    """`enrichment.snmp.cache_file`: this process's SNMP cache on disk (`<file>.<process id>`,
    since each process of a cluster holds the exporters of its own keys), as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(f"{path.name}.{process_id()}")

    def load(self) -> dict[bytes, ExporterCache]:
        """The caches saved last time; nothing (logged, counted) when the file is unreadable,
        truncated, of another version or holds anything but caches."""
        try:
            if self.path.stat().st_size > MAX_CACHE_FILE_BYTES:
                raise ValueError(f"larger than {MAX_CACHE_FILE_BYTES} bytes")
            caches = _caches_from_json(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as err:  # must not stop the outlet
            CACHE_FILE_ERRORS.labels("load").inc()
            _ratelimited(logging.WARNING, "cache-file-load", "SNMP cache file %s ignored (%s): "
                         "starting with an empty cache", self.path, err)
            return {}
        log.info("SNMP cache: %d exporters read from %s", len(caches), self.path)
        return caches

    def save(self, caches: dict[bytes, dict]) -> None:
        """Write atomically (a crash mid-write leaves the previous file)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        document = {"version": CACHE_FILE_VERSION,
                    "exporters": {address.hex(): cache for address, cache in caches.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(document, separators=(",", ":")))
            os.replace(temporary, self.path)
        except OSError as err:
            CACHE_FILE_ERRORS.labels("save").inc()
            _ratelimited(logging.WARNING, "cache-file", "SNMP cache file %s not written: %s",
                         self.path, err)


def _caches_from_json(data: bytes) -> dict[bytes, ExporterCache]:
    """ValueError (json.JSONDecodeError and UnicodeDecodeError are ValueErrors) unless `data` is
    a cache file of this version."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != CACHE_FILE_VERSION:
        raise ValueError(f"not a version {CACHE_FILE_VERSION} SNMP cache file")
    exporters = document.get("exporters")
    if not isinstance(exporters, dict):
        raise ValueError("no exporters")
    caches = {}
    for address, plain in exporters.items():
        packed = bytes.fromhex(address)
        if len(packed) != 16:
            raise ValueError(f"{address!r}: not an exporter address")
        caches[packed] = ExporterCache.from_plain(plain)
    return caches


def cache_file(cfg: SNMP) -> CacheFile | None:
    return CacheFile(cfg.cache_file) if cfg.enabled and cfg.cache_file else None


def _classify(indication: Any, status: Any) -> SNMPError:
    if isinstance(indication, errind.RequestTimedOut):
        return SNMPError("timeout", "no answer")
    if isinstance(indication, _AUTH_ERRORS):
        return SNMPError("auth", str(indication))
    if indication is not None:
        return SNMPError("other", str(indication))
    return SNMPError("agent_error", status.prettyPrint() if hasattr(status, "prettyPrint") else str(status))


__all__ = ["SNMPPoller", "snmp_poller", "CacheFile", "cache_file", "PollResult", "Interface", "interface_from",
           "ERROR_REASONS"]
