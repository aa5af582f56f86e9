"""The `enrichment` section: SNMP and static metadata, GeoIP, networks, classifiers, sampling."""

from __future__ import annotations

import ipaddress
import string
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, FilePath, field_validator, model_validator

from flows.regex import compile_regex
from flows.settings.types import Duration, Port, Section, Subnet

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
    def _usm_complete(self) -> SNMPCredentials:
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
    def _positive(self) -> SNMP:
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


def _check_rule(rule: ExporterRule | InterfaceRule) -> None:
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
    def _valid(self) -> ExporterRule:
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
    def _valid(self) -> InterfaceRule:
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
