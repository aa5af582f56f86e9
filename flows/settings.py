"""The configuration model: `dataflows.yaml`, overridden by WAXFLOW__SECTION__KEY variables.

Which file: `--config FILE`, else $WAXFLOW_CONFIG, else ./dataflows.yaml (built-in defaults
when that default file does not exist). Every value is validated at startup; a bad one stops
the program with a message naming the key (`kafka.partitions: ...`).
"""

from __future__ import annotations

import collections.abc
import ipaddress
import json
import os
import re
import string
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    FilePath,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from flows.decode.frames import DECAPSULATIONS
from flows.regex import compile_regex

CONFIG_ENV = "WAXFLOW_CONFIG"
DEFAULT_CONFIG = Path("dataflows.yaml")
ENV_PREFIX = "WAXFLOW__"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names each bad key."""


# --- value types -----------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """Accept `90`, `90s`, `15m`, `1h30m`, `15d`, `2w` (and timedelta); numbers are seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return timedelta(seconds=float(text))
        parts = _DURATION_RE.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration (examples: 30s, 15m, 1h30m, 15d)")
        return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    return value


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 15d, 1h30m, 500ms."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400_000), ("h", 3600_000), ("m", 60_000),
                       ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def _non_negative(value: timedelta) -> timedelta:
    if value.total_seconds() < 0:
        raise ValueError("must not be negative")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_non_negative),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
Port = Annotated[int, Field(ge=1, le=65535)]
Subnet = Annotated[str, AfterValidator(lambda v: str(ipaddress.ip_network(v, strict=False)))]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Size = Annotated[ByteSize, PlainSerializer(lambda v: v.human_readable(separator=""), return_type=str,
                                           when_used="json")]


def _split_list(value: Any) -> Any:
    """`a:1,b:2` from an environment variable is a list of two."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def split_host_port(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `v6:port` → (host without brackets, port); ValueError if not."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port with a port in 1-65535")
    return host.strip("[]"), int(port)


def _host_port(value: str) -> str:
    split_host_port(value)
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]


class Section(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default; `true` is not a
    number (YAML's booleans would otherwise read as 1 and 0: `port: true` binding port 1)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value


def _numeric(annotation: Any) -> bool:
    """int, float or a subclass (ByteSize), also inside Optional/Annotated."""
    from typing import get_args

    if isinstance(annotation, type):
        return issubclass(annotation, (int, float)) and not issubclass(annotation, bool)
    return any(_numeric(arg) for arg in get_args(annotation))


# --- inlet ---------------------------------------------------------------------------------

class Listener(Section):
    name: Identifier = Field(description="listener name, used in metrics and the envelope")
    address: str = Field("0.0.0.0", description="address to bind (0.0.0.0, ::, or one address)")
    port: Port = Field(description="UDP port")
    decoder: Literal["netflow", "sflow"] = Field(
        description="netflow (v5, v9, IPFIX; exporter = datagram source) or sflow (exporter = agent)")
    receive_buffer: Size = Field(ByteSize(32 * 1024 * 1024),
                                 description="SO_RCVBUF per socket (e.g. 32MiB)")
    timestamp_source: Literal["kernel", "userspace"] = Field(
        "kernel", description="kernel (SO_TIMESTAMPNS) or userspace (time of recvmsg)")
    decapsulation: Literal[DECAPSULATIONS] = Field(
        "none", description="take the inner packet of this tunnel as the flow (sFlow headers, IPFIX "
                            "IE 315 frames); flows of packets in no such tunnel are dropped, counted")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))


def _default_listeners() -> list[Listener]:
    return [
        Listener(name="netflow", port=2055, decoder="netflow"),
        Listener(name="ipfix", port=4739, decoder="netflow"),
        Listener(name="sflow", port=6343, decoder="sflow"),
    ]


class Inlet(Section):
    listeners: Annotated[list[Listener], Field(min_length=1)] = Field(
        default_factory=_default_listeners, description="UDP listeners (at least one)")
    metrics_listen: HostPort = Field("127.0.0.1:9101",
                                     description="Prometheus /metrics of the inlet (worker 0)")
    balancing: Literal["auto", "ebpf", "cbpf", "hash"] = Field(
        "auto", description="spreading datagrams over the workers' sockets: ebpf (round-robin, "
                            "needs bcc and CAP_BPF), cbpf (random), hash (kernel 4-tuple hash), "
                            "auto (the first of these that loads)")
    bpffs: Path = Field(Path("/sys/fs/bpf/waxflow"),
                        description="bpffs directory where the eBPF socket maps are pinned, so "
                                    "that every process of the cluster joins the same map")
    max_batch: Annotated[int, Field(ge=1, le=65536)] = Field(
        1024, description="datagrams a worker reads from one socket before yielding")

    @field_validator("listeners")
    @classmethod
    def _unique(cls, listeners: list[Listener]) -> list[Listener]:
        names = [listener.name for listener in listeners]
        if len(set(names)) != len(names):
            raise ValueError(f"listener names must be unique, got {names}")
        binds = [(listener.address, listener.port) for listener in listeners]
        if len(set(binds)) != len(binds):
            raise ValueError("two listeners bind the same address and port")
        return listeners


# --- kafka ---------------------------------------------------------------------------------

KafkaValue = str | int | float | bool


class Kafka(Section):
    brokers: Annotated[list[HostPort], NoDecode, BeforeValidator(_split_list), Field(min_length=1)] = Field(
        default_factory=lambda: ["127.0.0.1:9092"], description="bootstrap servers")
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = Field(
        "flows", description="topic base name; the envelope version is appended (flows-v1)")
    partitions: Annotated[int, Field(ge=1, le=32767)] = Field(
        4, description="partitions when creating the topic (up to 32,767: a row's origin keeps 15 bits of it)")
    replication_factor: Annotated[int, Field(ge=1)] = Field(1, description="replication factor")
    config_entries: dict[str, str] = Field(
        default_factory=lambda: {"retention.ms": str(6 * 3600 * 1000)},
        description="topic configuration entries kept in sync when manage_topic is on")
    manage_topic: bool = Field(True, description="create the topic and update its config entries")
    key_mode: Literal["by-exporter", "random"] = Field(
        "by-exporter", description="message key: exporter address (ordered per exporter) or random")
    queue_full: Literal["spool", "block", "drop"] = Field(
        "spool", description="when the producer queue is full (Kafka slow or away): spool (to disk, "
                             "replayed in order once Kafka takes messages again), block "
                             "(back-pressure into the sockets) or drop (counted)")
    spool_max_bytes: Size = Field(
        ByteSize(1024 ** 3), description="disk the inlet's spool may use per producer worker "
                               "(<data_dir>/spool/inlet); past it messages are dropped (counted)")
    flush_timeout: Duration = Field(timedelta(seconds=30),
                                    description="on a clean stop, wait this long for Kafka to "
                                                "acknowledge what is still queued")
    consumer_group: str = Field("waxflow-outlet", description="consumer group of the outlet")
    start_offset: Literal["committed", "earliest", "latest"] = Field(
        "committed", description="outlet start without a recovery snapshot: committed offsets "
                                 "(earliest when the group has none), earliest or latest")
    producer: dict[str, KafkaValue] = Field(default_factory=dict,
                                            description="extra librdkafka producer settings")
    consumer: dict[str, KafkaValue] = Field(default_factory=dict,
                                            description="extra librdkafka consumer settings")

    @field_validator("config_entries", mode="before")
    @classmethod
    def _entries_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value

    @property
    def bootstrap(self) -> str:
        return ",".join(self.brokers)


# --- clickhouse ----------------------------------------------------------------------------

def _check_dsn(value: str) -> str:
    """chdb:PATH (relative to the working directory), chdb:///abs/path, or http(s)://host:port."""
    parsed = urlparse(value)
    if parsed.scheme == "chdb":
        if parsed.netloc == "memory":
            return value
        location = parsed.netloc + parsed.path  # chdb:rel/dir, chdb:///abs/dir, chdb://host-less/dir
        if not location:
            raise ValueError("a chdb DSN needs a directory, e.g. chdb:data/clickhouse")
        return "chdb://" + str(Path(location).expanduser().resolve())
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise ValueError(f"{value!r} has no host")
        try:
            parsed.port
        except ValueError as err:
            raise ValueError(f"{value!r}: {err}") from None
        return value
    raise ValueError(f"{value!r}: scheme must be chdb (embedded) or http/https (server)")


class TTLs(Section):
    flows: Duration = Field(timedelta(days=15), description="raw flows")
    flows_1m0s: Duration = Field(timedelta(days=7), description="1-minute aggregates")
    flows_5m0s: Duration = Field(timedelta(days=90), description="5-minute aggregates")
    flows_1h0m0s: Duration = Field(timedelta(days=730), description="1-hour aggregates")
    exporters: Duration = Field(timedelta(days=1), description="exporters and interfaces seen")

    @model_validator(mode="after")
    def _positive(self) -> "TTLs":
        for name in type(self).model_fields:
            if getattr(self, name).total_seconds() < 1:
                raise ValueError(f"{name}: a TTL must be at least 1s")
        return self


class ClickHouse(Section):
    dsn: Annotated[str, AfterValidator(_check_dsn)] = Field(
        "chdb:data/clickhouse",
        description="chdb:DIR (embedded chDB, relative to the working directory) or http(s)://user:pass@host:8123")
    database: Identifier = Field("waxflow", description="database name")
    ttl: TTLs = Field(default_factory=TTLs, description="data retention per table")
    batch_rows: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        50_000, description="flush an insert batch at this many rows")
    batch_wait: Duration = Field(timedelta(seconds=5), description="... or after this long")
    unhealthy_after: Duration = Field(timedelta(seconds=30),
                                      description="/healthz is 503 once inserts have failed (and been "
                                                  "retried) for this long without one succeeding")
    asns_file: FilePath | None = Field(None, description="CSV asn,name loaded into the asns dictionary "
                                                     "(default: the small list shipped with waxflow)")

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")


# --- enrichment (issue 6 fills in the providers) ------------------------------------------------

SNMPAuth = Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"]
SNMPPriv = Literal["none", "des", "3des", "aes", "aes192", "aes256", "aes192c", "aes256c"]


class SNMPCredentials(Section):
    subnet: Subnet = Field(description="exporters this entry applies to")
    version: Literal["2c", "3"] = Field("2c", description="SNMP version")
    communities: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["public"], description="SNMPv2c communities, tried in order")
    user: str | None = Field(None, description="SNMPv3 USM user (required for version 3)")
    auth_protocol: SNMPAuth = Field("none", description="SNMPv3 authentication protocol")
    auth_password: str | None = Field(None, description="SNMPv3 authentication passphrase "
                                                        "(8 characters or more)")
    priv_protocol: SNMPPriv = Field(
        "none", description="SNMPv3 privacy protocol (aes192/aes256: Blumenthal key extension as "
                            "net-snmp; aes192c/aes256c: Reeder's, as Cisco)")
    priv_password: str | None = Field(None, description="SNMPv3 privacy passphrase "
                                                        "(8 characters or more)")
    context: str = Field("", description="SNMPv3 context name")
    port: Port = Field(161, description="agent UDP port")
    agent_address: str | None = Field(None, description="poll this address instead of the exporter's")

    @field_validator("agent_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.ip_address(value))

    @model_validator(mode="after")
    def _usm_complete(self) -> "SNMPCredentials":
        if self.version != "3":
            return self
        if not self.user:
            raise ValueError("user: required with version 3")
        if self.priv_protocol != "none" and self.auth_protocol == "none":
            raise ValueError("priv_protocol: SNMPv3 privacy needs an auth_protocol")
        for kind in ("auth", "priv"):
            password = getattr(self, f"{kind}_password")
            if getattr(self, f"{kind}_protocol") != "none" and len(password or "") < 8:
                raise ValueError(f"{kind}_password: needs 8 characters or more with "
                                 f"{kind}_protocol {getattr(self, f'{kind}_protocol')}")
        return self


class SNMP(Section):
    enabled: bool = Field(False, description="poll exporters with SNMP for names and speeds")
    credentials: list[SNMPCredentials] = Field(
        default_factory=list, description="per subnet, most specific wins; exporters in none of "
                                          "them are polled with SNMPv2c community public on port 161")
    timeout: Duration = Field(timedelta(seconds=1), description="per SNMP request")
    retries: Annotated[int, Field(ge=0, le=10)] = Field(1, description="per SNMP request")
    cache_duration: Duration = Field(timedelta(minutes=30), description="forget entries not used this long")
    cache_refresh: Duration = Field(timedelta(hours=1), description="refresh entries older than this")
    cache_check_interval: Duration = Field(timedelta(minutes=2), description="how often to look for both")
    query_timeout: Duration = Field(timedelta(seconds=5),
                                    description="hold flows waiting for metadata at most this long")
    breaker_failures: Annotated[int, Field(ge=1)] = Field(
        3, description="consecutive failed polls that open an exporter's breaker")
    breaker_duration: Duration = Field(timedelta(minutes=1),
                                       description="no polls of an exporter with an open breaker "
                                                   "for this long")
    max_concurrent: Annotated[int, Field(ge=1, le=1024)] = Field(
        32, description="SNMP requests in flight at once per outlet process")
    cache_file: Path | None = Field(
        None, description="also keep the cache in this file (one per process: <file>.<process "
                          "id>), read at start, rewritten every cache_check_interval: for outlets "
                          "run without recovery (recovery snapshots hold the cache anyway)")

    @model_validator(mode="after")
    def _positive(self) -> "SNMP":
        for name in ("timeout", "cache_duration", "cache_refresh", "cache_check_interval"):
            if getattr(self, name).total_seconds() <= 0:
                raise ValueError(f"{name}: must be more than 0s")
        return self


class StaticInterface(Section):
    name: str = Field(description="interface name")
    description: str = Field("", description="interface description")
    speed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(0, description="speed in Mbps")


class StaticExporter(Section):
    name: str = Field(description="exporter name")
    interfaces: dict[Annotated[int, Field(ge=1, le=2**32 - 1)], StaticInterface] = Field(
        default_factory=dict, description="by ifIndex; these win over SNMP, others are polled "
                                          "when SNMP is enabled")


def _as_list(value: Any) -> Any:
    """One path or a list of paths."""
    return [value] if isinstance(value, (str, Path)) else value


def _regex(value: str) -> str:
    compile_regex(value)
    return value


Regex = Annotated[str, AfterValidator(_regex)]
"""A regular expression (RE2 syntax: flows/regex.py) searched in a text (anchor it with ^ and $ to
match the whole text)."""

MMDBFiles = Annotated[list[FilePath], BeforeValidator(_as_list)]
ASNProvider = Literal["flow", "flow-except-private", "networks", "geoip"]


class GeoIP(Section):
    asn_database: MMDBFiles = Field(
        default_factory=list, description="MMDB files with AS numbers (MaxMind GeoLite2-ASN or "
                                          "IPinfo layout); one path or a list, the first answer wins")
    geo_database: MMDBFiles = Field(
        default_factory=list, description="MMDB files with country, city and state (MaxMind "
                                          "Country/City or IPinfo layout); one path or a list, "
                                          "the first answer wins per field")
    check_interval: Duration = Field(
        timedelta(seconds=30), description="how often to look at the files' modification time; "
                                           "a changed file is reloaded without a restart")
    asn_providers: list[ASNProvider] = Field(
        default_factory=lambda: ["flow", "networks", "geoip"],
        description="where Src/DstAS come from, first non-zero wins: flow (as exported), "
                    "flow-except-private (ignoring private and reserved AS numbers), networks "
                    "(enrichment.networks), geoip (asn_database)")


class Network(Section):
    name: str = Field("", description="network name")
    role: str = Field("", description="network role")
    site: str = Field("", description="site")
    region: str = Field("", description="region")
    tenant: str = Field("", description="tenant")
    country: Annotated[str, Field(pattern=r"^([A-Z]{2})?$")] = Field(
        "", description="ISO country code (two capital letters)")
    asn: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(0, description="AS number")


def _template_names(template: str) -> list[str]:
    """Capture names a `${name}` template uses; a malformed template is an error."""
    parsed = string.Template(template)
    if not parsed.is_valid():
        raise ValueError(f"{template!r} is not a valid template (use $name or ${{name}}, $$ for $)")
    return parsed.get_identifiers()


def _check_rule(rule: "ExporterRule | InterfaceRule") -> None:
    """Templates may only use named groups of the rule's own regexes; a rule must do something."""
    groups: set[str] = set()
    for field in type(rule.match).model_fields:
        value = getattr(rule.match, field)
        if isinstance(value, str) and field in REGEX_FIELDS:
            groups |= set(compile_regex(value).groupindex)
    assigned = rule.set.model_dump(exclude_none=True)
    if not assigned and not rule.reject:
        raise ValueError("a rule must set an attribute or reject")
    for attribute, template in assigned.items():
        unknown = [name for name in _template_names(template) if name not in groups]
        if unknown:
            raise ValueError(f"set.{attribute}: ${unknown[0]} is not a named group "
                             f"(?P<{unknown[0]}>...) of this rule's match")
        if attribute == "boundary" and "$" not in template and template not in BOUNDARY_VALUES:
            raise ValueError(f"set.boundary: must be one of {', '.join(BOUNDARY_VALUES)} "
                             f"(got {template!r})")


REGEX_FIELDS = ("name", "description", "exporter")
BOUNDARY_VALUES = ("external", "internal")


class ExporterMatch(Section):
    name: Regex | None = Field(None, description="regex searched in the exporter name")
    subnet: Subnet | None = Field(None, description="exporter address in this subnet")


class ExporterSet(Section):
    group: str | None = Field(None, description="ExporterGroup (`$name` inserts the named group `name` of the match)")
    role: str | None = Field(None, description="ExporterRole")
    site: str | None = Field(None, description="ExporterSite")
    region: str | None = Field(None, description="ExporterRegion")
    tenant: str | None = Field(None, description="ExporterTenant")


class ExporterRule(Section):
    match: ExporterMatch = Field(default_factory=ExporterMatch,
                                 description="all conditions must hold (none: every exporter)")
    set: ExporterSet = Field(default_factory=ExporterSet, description="attributes to decide")
    reject: bool = Field(False, description="drop the flows of matching exporters (counted)")

    @model_validator(mode="after")
    def _valid(self) -> "ExporterRule":
        _check_rule(self)
        return self


class InterfaceMatch(Section):
    exporter: Regex | None = Field(None, description="regex searched in the exporter name")
    exporter_subnet: Subnet | None = Field(None, description="exporter address in this subnet")
    name: Regex | None = Field(None, description="regex searched in the interface name")
    description: Regex | None = Field(None, description="regex searched in the interface description")
    speed_min: Annotated[int, Field(ge=0)] | None = Field(None, description="speed at least (Mbps)")
    speed_max: Annotated[int, Field(ge=0)] | None = Field(None, description="speed at most (Mbps)")


class InterfaceSet(Section):
    connectivity: str | None = Field(None, description="In/OutIfConnectivity, lower-cased (transit, pni, ix, ...)")
    provider: str | None = Field(None, description="In/OutIfProvider, lower-cased")
    boundary: str | None = Field(None, description="In/OutIfBoundary: external or internal")
    name: str | None = Field(None, description="rename: In/OutIfName")
    description: str | None = Field(None, description="rename: In/OutIfDescription")


class InterfaceRule(Section):
    match: InterfaceMatch = Field(default_factory=InterfaceMatch,
                                  description="all conditions must hold (none: every interface)")
    set: InterfaceSet = Field(default_factory=InterfaceSet, description="attributes to decide")
    reject: bool = Field(False, description="drop the flows in or out of matching interfaces (counted)")

    @model_validator(mode="after")
    def _valid(self) -> "InterfaceRule":
        _check_rule(self)
        return self


class Classifiers(Section):
    exporter: list[ExporterRule] = Field(
        default_factory=list, description="exporter rules, in order; the first rule deciding an "
                                          "attribute wins, a matching reject drops the flows")
    interface: list[InterfaceRule] = Field(
        default_factory=list, description="interface rules, in order; the first rule deciding an "
                                          "attribute wins, a matching reject drops the flows")


class Sampling(Section):
    default: Annotated[int, Field(ge=1)] | None = Field(
        None, description="rate for flows whose exporter sends none (unset: see `missing`)")
    defaults: dict[Subnet, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="per-subnet rate for flows without one")
    override: dict[Subnet, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="per-subnet rate replacing what exporters send")
    missing: Literal["keep", "drop"] = Field(
        "keep", description="flows with no known rate: keep (rate 1, counted) or drop (counted)")


class Enrichment(Section):
    snmp: SNMP = Field(default_factory=SNMP)
    static: dict[Subnet, StaticExporter] = Field(
        default_factory=dict, description="exporter names and interfaces by subnet (most specific "
                                          "wins), taking precedence over SNMP")
    geoip: GeoIP = Field(default_factory=GeoIP)
    networks: dict[Subnet, Network] = Field(default_factory=dict,
                                            description="subnet attributes; most specific wins")
    classifiers: Classifiers = Field(default_factory=Classifiers)
    sampling: Sampling = Field(default_factory=Sampling)


class API(Section):
    listen: HostPort = Field("127.0.0.1:8080", description="HTTP API and outlet /metrics")
    token: str | None = Field(None, description="bearer token required by the API when set "
                              "(not for /metrics, /healthz and the dictionary files)")
    dsn: str | None = Field(None, description="http(s)://user:pass@host:8123 of a read-only ClickHouse user "
                            "for API queries (default: clickhouse.dsn)")
    query_timeout: Duration = Field(timedelta(seconds=10),
                                    description="longest an API query may run (max_execution_time)")
    max_rows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        10_000, description="most rows an API SQL query returns (more: truncated, flagged)")
    max_memory: Size = Field(ByteSize(512 * 1024**2),
                             description="memory one API query may use (max_memory_usage); also bounds the "
                                         "largest block of a result the outlet decodes at once")
    max_result: Size = Field(ByteSize(64 * 1024**2),
                             description="largest result of an API SQL query (max_result_bytes)")
    query_slots: Annotated[int, Field(ge=1, le=64)] = Field(
        2, description="API queries that run at once, each on its own read-only store session")
    queue_wait: Duration = Field(timedelta(seconds=2),
                                 description="longest a request waits for a free query slot (then 503 busy)")
    max_connections: Annotated[int, Field(ge=4, le=10_000)] = Field(
        64, description="HTTP connections served at once (more: 503 at once); /healthz and /metrics "
                        "never wait for a query slot")
    saved_filters: bool = Field(True, description="let API callers save and delete named filters (the API's "
                                                  "only write: one validated row into saved_filters); "
                                                  "false makes the API wholly read-only")

    @field_validator("token")
    @classmethod
    def _real_token(cls, value: str | None) -> str | None:
        # An empty token once meant "no auth": refuse it rather than guess which was meant.
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError("must be a non-empty token without surrounding spaces "
                             "(leave the key out to run the API without auth)")
        if value is not None and not all(33 <= ord(c) < 127 for c in value):
            raise ValueError("must be printable ASCII without spaces (it travels in an HTTP header)")
        return value

    @field_validator("query_timeout")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("queue_wait")
    @classmethod
    def _short_wait(cls, value: timedelta) -> timedelta:
        if not 0 <= value.total_seconds() <= 60:
            raise ValueError("must be between 0s and 60s")
        return value

    @field_validator("dsn")
    @classmethod
    def _server_dsn(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("http", "https"):
            raise ValueError("must be http(s)://user:pass@host:port (a ClickHouse server's read-only user)")
        return value if value is None else _check_dsn(value)

    @field_validator("max_memory", "max_result")
    @classmethod
    def _at_least_a_mebibyte(cls, value: ByteSize) -> ByteSize:
        if value < 1024**2:
            raise ValueError("must be at least 1MiB")
        return value


# --- the whole file --------------------------------------------------------------------------

class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        validate_default=True,
    )

    inlet: Inlet = Field(default_factory=Inlet)
    kafka: Kafka = Field(default_factory=Kafka)
    clickhouse: ClickHouse = Field(default_factory=ClickHouse)
    enrichment: Enrichment = Field(default_factory=Enrichment)
    api: API = Field(default_factory=API)
    data_dir: Path = Field(Path("data"), description="local state: broker pid, recovery, caches")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment must win over it.
        return (env_settings, init_settings)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def config_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """The file to read and whether someone asked for it (a missing asked-for file is an error)."""
    if explicit:
        return Path(explicit), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return DEFAULT_CONFIG, False


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last
    one silently, so the first would be ignored without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may be overridden by the mapping's own
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _read_yaml(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: configuration file not found")
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "[")):
            continue  # pydantic's validator wrappers and markers, not keys
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += f"[{str(part)!r}]"  # a mapping key such as a subnet
    return out or "(top level)"


def describe_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        key = _key(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        got = item.get("input")
        quiet = isinstance(got, (dict, list)) or item["type"] in ("extra_forbidden", "value_error")
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def unknown_environment_keys(environ: Any) -> list[str]:
    """`WAXFLOW__...` variables that name no setting (pydantic-settings would ignore them, so a
    typo would silently leave the default in place). Free-form mappings end the walk."""
    from typing import get_args

    unknown = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        model: Any = Settings
        for part in name[len(ENV_PREFIX):].lower().split("__"):
            fields = {key.lower(): field for key, field in model.model_fields.items()}
            if part not in fields:
                unknown.append(name)
                break
            annotation = fields[part].annotation
            nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type)
                      and issubclass(a, BaseModel)]
            if not nested:
                break  # a value, or a free-form mapping/list: the model validates the rest
            model = nested[0]
    return unknown


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the configuration; raise ConfigError naming every bad key."""
    file, required = config_path(path)
    data = _read_yaml(file, required)
    unknown = unknown_environment_keys(os.environ)
    if unknown:
        raise ConfigError(f"environment ({ENV_PREFIX}...): invalid configuration\n"
                          + "\n".join(f"  {name}: unknown key" for name in unknown))
    try:
        return Settings(**data)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, str(file))) from None
    except SettingsError as err:
        # Raised for an environment value that is not valid JSON where a structure is expected.
        raise ConfigError(f"environment ({ENV_PREFIX}...): {err}") from None


def dataflow_settings() -> Settings:
    """The configuration as a dataflow process starts with it: logs on stderr unless already
    set up, and a bad value ends the process (exit 2) with the message naming the key."""
    import logging
    import sys

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return load_settings()
    except ConfigError as err:
        print(f"configuration error\n{err}", file=sys.stderr)
        sys.exit(2)


# --- reference documentation ------------------------------------------------------------------

def _type_name(annotation: Any) -> str:
    from typing import Annotated, get_args, get_origin

    if get_origin(annotation) is Annotated:  # constrained types read as their base type
        return _type_name(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return " or ".join(str(a) for a in get_args(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and len(get_args(annotation)) == 2:
        return _type_name(args[0]) + " (optional)"
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = re.sub(r"typing\.|pydantic\.types\.|pathlib\.|datetime\.|flows\.settings\.", "", str(text))
    return {"timedelta": "duration", "ByteSize": "size"}.get(text, text)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The section model inside a field type, and how its keys are written (list item, map value)."""
    from typing import get_args, get_origin

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<key>"
    return None, ""


def _default_text(field: Any) -> str:
    from pydantic import TypeAdapter
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, timedelta):
        value = format_duration(value)
    elif isinstance(value, ByteSize):
        value = value.human_readable(separator="")
    else:
        value = TypeAdapter(field.annotation).dump_python(value, mode="json")
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "see dataflows.yaml"
    shown = value if isinstance(value, str) else json.dumps(value)
    return f"`{shown}`".replace("|", "\\|")


def reference_rows(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every leaf key, in declaration order."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner, suffix = _model_in(field.annotation)
        if inner is not None:
            if suffix:
                rows.append((key, "list" if suffix == "[]" else "map", _default_text(field),
                             field.description or ""))
            rows.extend(reference_rows(inner, f"{key}{suffix}."))
            continue
        rows.append((key, _type_name(field.annotation), _default_text(field), field.description or ""))
    return rows


def reference_markdown() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, description in reference_rows():
        lines.append(f"| `{key}` | {kind.replace('|', chr(92) + '|')} | {default} | {description} |")
    return "\n".join(lines) + "\n"
