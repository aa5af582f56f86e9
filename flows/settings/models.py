"""The configuration model: one section model per component and `Settings`, the whole file
overridden by WAXFLOW__SECTION__KEY variables (the enrichment section: enrichment.py)."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BeforeValidator, ByteSize, Field, FilePath, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from flows.decode.frames import DECAPSULATIONS
from flows.settings.alerts import Alerts
from flows.settings.enrichment import Enrichment
from flows.settings.types import Duration, HostPort, Identifier, Port, Section, Size, _split_list

ENV_PREFIX = "WAXFLOW__"


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
                                 "(earliest when the group has none; with recovery, earliest: the "
                                 "sink's marks drop what is stored), earliest or latest")
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
            _ = parsed.port  # (reading it validates it)
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
    def _positive(self) -> TTLs:
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


# --- logging -----------------------------------------------------------------------------------

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Logging(Section):
    level: LogLevel = Field("INFO", description="lowest level logged, by every waxflow process (the "
                                                "dataflows `waxflow run` and `waxflow up` start too)")
    format: Literal["text", "json"] = Field(
        "text", description="text (one line: time level logger: message) or json (one object per line: "
                            "time, level, logger, message, exception)")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


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
    logging: Logging = Field(default_factory=Logging)
    alerts: Alerts = Field(default_factory=Alerts, description="detection rules and their actions")
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

