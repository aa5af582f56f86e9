"""Value types of the configuration (durations, sizes, ports, subnets, host:port) and the base
of every section model; the error a configuration that cannot be used raises."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)


class ConfigError(Exception):
    """A configuration that cannot be used; the message names each bad key."""


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
