"""The `alerts:` configuration: detection rules, their mitigation, and the defaults waxflow ships.
Validated like every other section (a bad value names its key); `rules()` turns it into the
flows/detect.py rules and flows/mitigation.py policies the dataflow and the backtest run.

The shipped defaults (`DEFAULT_RULES`), each keyed by destination address and measured over a
10 s sliding window; they alert only (no mitigation) until a rule's `mitigation` says otherwise:

| rule | flows | measure | fires at |
|---|---|---|---|
| udp-amplification | UDP from chargen, DNS, NTP, SNMP, CLDAP, SSDP, WS-Discovery, memcached | bps | 1 Gbps for 10 s |
| syn-flood | TCP | share of packets that are SYN without ACK | 80 % for 10 s, at 50 kpps or more |
| icmp-flood | ICMP and ICMPv6 | pps | 100 kpps for 10 s |
| fragment-flood | IP fragments after the first | pps | 50 kpps for 10 s |
| destination-bps | all | bps | 10 Gbps for 10 s |
| destination-pps | all | pps | 2 Mpps for 10 s |
| carpet-bombing | as udp-amplification, keyed by destination /24 (IPv6 /64) | bps | 2 Gbps for 10 s |
| many-sources | TCP and UDP | distinct source addresses | 20,000 for 10 s |

Thresholds are network-specific: tune them with `waxflow alerts backtest` before enabling
mitigation.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from flows import detect, mitigation
from flows.columns import QueryError
from flows.settings.types import Duration, Section

AMPLIFIER_PORTS = (19, 53, 123, 161, 389, 1900, 3702, 11211)
_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Mitigation(Section):
    kind: str = Field("none", description="none, rtbh (blackhole the destination) or flowspec")
    dry_run: bool = Field(True, description="log the routes instead of sending them")
    action: str = Field("discard", description="flowspec: discard or rate-limit")
    rate: Annotated[float, Field(ge=0)] = Field(0.0, description="flowspec rate-limit, bytes per second")
    protocol: Annotated[int, Field(ge=0, le=255)] | None = Field(None, description="flowspec: IP protocol to match")
    source_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list,
                                                                       description="flowspec: source ports to match")
    community: str = Field(mitigation.BLACKHOLE, description="rtbh: the community (RFC 7999 BLACKHOLE)")
    next_hop: str = Field("192.0.2.1", description="rtbh: the discard next hop")
    hold_down: Duration = Field(timedelta(minutes=5), description="how long routes stay up after the alert ends")
    max_announcements: Annotated[int, Field(ge=1, le=1000)] = Field(10, description="routes up at once per rule")

    @model_validator(mode="after")
    def _policy(self) -> Mitigation:
        self.policy()  # refuses what flows/mitigation.py refuses
        return self

    def policy(self) -> mitigation.Policy:
        return mitigation.Policy(self.kind, self.dry_run, self.action, self.rate, self.protocol,
                                 tuple(self.source_ports), self.community, self.next_hop,
                                 int(self.hold_down.total_seconds()), self.max_announcements)


class AlertRule(Section):
    name: Annotated[str, Field(pattern=_NAME)] = Field(description="the rule's name (lower case, digits, - and _)")
    filter: str = Field("", description="flows the rule looks at, in the filter language")
    key: str = Field("DstAddr", description="what is counted apart: columns joined by +, addresses with a prefix")
    measure: str = Field("bps", description=f"one of {', '.join(detect.MEASURES)}")
    window: Duration = Field(timedelta(seconds=10), description="sliding window the measure is taken over")
    threshold: Annotated[float, Field(gt=0)] = Field(
        description="fires at or over this (bps, pps, flows/s, sources, a ratio)")
    min_duration: Duration = Field(timedelta(seconds=10), description="how long the measure stays over it")
    cooldown: Duration = Field(timedelta(minutes=5), description="after an end, before the key fires again")
    min_pps: Annotated[float, Field(ge=0)] = Field(0.0, description="and at least this many packets/s")
    max_keys: Annotated[int, Field(ge=1, le=1_000_000)] = Field(10_000, description="keys tracked (beyond: evicted)")
    mitigation: Mitigation = Field(default_factory=Mitigation)

    @model_validator(mode="after")
    def _valid(self) -> AlertRule:
        try:
            rule = self.rule()
        except QueryError as err:
            raise ValueError(str(err)) from None
        if self.mitigation.kind != "none":
            cut = next((p for p in rule.key if p.column == "DstAddr"), None)
            if cut is None:
                raise ValueError("mitigation needs a key with DstAddr (the destination its routes cover)")
            if cut.v4_prefix is not None and (cut.v4_prefix < mitigation.SHORTEST[4]
                                              or (cut.v6_prefix or 128) < mitigation.SHORTEST[6]):
                raise ValueError(f"mitigation announces the key's prefix: at least /{mitigation.SHORTEST[4]} "
                                 f"(IPv4) and /{mitigation.SHORTEST[6]} (IPv6), not {cut.label}")
        return self

    def rule(self) -> detect.Rule:
        return detect.make_rule(self.name, self.filter, self.key, self.measure, int(self.window.total_seconds()),
                                self.threshold, min_duration=int(self.min_duration.total_seconds()),
                                cooldown=int(self.cooldown.total_seconds()), max_keys=self.max_keys,
                                min_pps=self.min_pps)


def _default(name: str, filter: str, measure: str, threshold: float, **rest: Any) -> dict[str, Any]:
    return {"name": name, "filter": filter, "measure": measure, "threshold": threshold, **rest}


DEFAULT_RULES = (
    _default("udp-amplification", f"Proto = 17 AND SrcPort IN ({', '.join(map(str, AMPLIFIER_PORTS))})", "bps", 1e9),
    _default("syn-flood", "Proto = 6", "syn_ratio", 0.8, min_pps=50_000),
    _default("icmp-flood", "Proto IN (1, 58)", "pps", 100_000),
    _default("fragment-flood", "IPFragmentOffset > 0", "pps", 50_000),
    _default("destination-bps", "", "bps", 10e9),
    _default("destination-pps", "", "pps", 2e6),
    _default("carpet-bombing", f"Proto = 17 AND SrcPort IN ({', '.join(map(str, AMPLIFIER_PORTS))})", "bps", 2e9,
             key="DstAddr/24/64"),
    _default("many-sources", "Proto IN (6, 17)", "distinct_src", 20_000),
)


class Webhook(Section):
    url: str | None = Field(None, description="POST each alert event here as JSON (off when unset)")
    secret: str | None = Field(None, description="HMAC-SHA256 key: the body's signature goes in X-Waxflow-Signature")
    timeout: Duration = Field(timedelta(seconds=5), description="per attempt")
    retries: Annotated[int, Field(ge=0, le=20)] = Field(5, description="attempts after the first, with backoff")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value


class BGP(Section):
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")] = Field(
        "127.0.0.1", description="gobgpd's gRPC API host")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(50051, description="gobgpd's gRPC API port")
    cli: str = Field("gobgp", description="the gobgp command (Debian package gobgpd)")


class Alerts(Section):
    enabled: bool = Field(False, description="run detection in the outlet")
    defaults: bool = Field(True, description="include the shipped default rules (a rule of the same name replaces one)")
    rules: list[AlertRule] = Field(default_factory=list, description="detection rules")
    webhook: Webhook = Field(default_factory=Webhook)
    bgp: BGP = Field(default_factory=BGP)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("two rules have the same name")
        return rules

    def all_rules(self) -> list[AlertRule]:
        """The rules in effect: the defaults (when on) with the configured ones replacing or adding."""
        mine = {r.name: r for r in self.rules}
        shipped = [AlertRule(**d) for d in DEFAULT_RULES if d["name"] not in mine] if self.defaults else []
        return shipped + list(mine.values())
