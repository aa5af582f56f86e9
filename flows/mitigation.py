"""Mitigation as pure logic: which BGP routes an alert announces, when they are withdrawn, and
the GoBGP command lines that carry them. connectors/bgp.py runs the commands.

Two kinds of route, both off unless a rule asks for them:
- RTBH (remote triggered black hole): the attacked destination (/32 or /128, or the key's prefix)
  with the BLACKHOLE community (RFC 7999, 65535:666) and a next hop the operator's routers
  discard, so upstreams drop the traffic before it reaches the link;
- FlowSpec (RFC 8955/8956): match destination + protocol + source ports, action discard or a
  traffic-rate limit (bytes per second), so only the attack's traffic is dropped.

An alert's routes are announced when it starts (at most `max_announcements` at once per rule:
more are refused and counted), and withdrawn `hold_down` seconds after it ends.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

BLACKHOLE = "65535:666"
_COMMUNITY = re.compile(r"[0-9]{1,5}:[0-9]{1,5}")
SHORTEST = {4: 16, 6: 32}
"""The shortest prefixes a rule may announce: a key cut shorter would blackhole whole networks."""
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "ipv6-icmp", 132: "sctp"}


@dataclass(frozen=True)
class Policy:
    """A rule's mitigation: `kind` none, rtbh or flowspec."""

    kind: str = "none"
    dry_run: bool = True
    action: str = "discard"  # flowspec: discard or rate-limit
    rate: float = 0.0  # flowspec rate-limit, bytes per second
    protocol: int | None = None  # flowspec match
    source_ports: tuple[int, ...] = ()
    community: str = BLACKHOLE
    next_hop: str = "192.0.2.1"
    hold_down: int = 300
    max_announcements: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ("none", "rtbh", "flowspec"):
            raise ValueError("kind is none, rtbh or flowspec")
        if self.action not in ("discard", "rate-limit"):
            raise ValueError("action is discard or rate-limit")
        if self.action == "rate-limit" and self.rate <= 0:
            raise ValueError("a rate-limit needs a rate above 0 (bytes per second)")
        if not all(0 < p < 65536 for p in self.source_ports) or len(self.source_ports) > 16:
            raise ValueError("source_ports are up to 16 ports in 1-65535")
        if not _COMMUNITY.fullmatch(self.community) or any(int(p) > 65535 for p in self.community.split(":")):
            raise ValueError("community is ASN:VALUE, each 0-65535 (e.g. 65535:666)")
        if not self.rate < 1e15:
            raise ValueError("rate is bytes per second, under 1e15")
        ipaddress.ip_address(self.next_hop)


@dataclass(frozen=True)
class Route:
    kind: str  # rtbh or flowspec
    prefix: str  # "203.0.113.7/32", "2001:db8::1/128"
    policy: Policy

    @property
    def family(self) -> str:
        v6 = ipaddress.ip_network(self.prefix).version == 6
        return ("ipv6" if v6 else "ipv4") + ("-flowspec" if self.kind == "flowspec" else "")


def destination(address: bytes, prefix: int | None = None, v6_prefix: int | None = None) -> str:
    """A key's 16-byte address (IPv4-mapped for IPv4) as the prefix to announce."""
    ip = ipaddress.IPv6Address(address)
    if ip.ipv4_mapped is not None:
        return str(ipaddress.ip_network(f"{ip.ipv4_mapped}/{32 if prefix is None else prefix}", strict=False))
    return str(ipaddress.ip_network(f"{ip}/{128 if v6_prefix is None else v6_prefix}", strict=False))


def gobgp_args(route: Route, add: bool) -> list[str]:
    """`gobgp` arguments (after the host/port options) that add or delete the route."""
    verb = "add" if add else "del"
    policy = route.policy
    if route.kind == "rtbh":
        args = ["global", "rib", "-a", route.family, verb, route.prefix]
        return args + (["nexthop", policy.next_hop, "community", policy.community] if add else [])
    match = ["match", "destination", route.prefix]
    if policy.protocol is not None:
        match += ["protocol", PROTOCOLS.get(policy.protocol, str(policy.protocol))]
    if policy.source_ports:
        match += ["source-port", *(f"=={port}" for port in policy.source_ports)]
    args = ["global", "rib", "-a", route.family, verb, *match]
    if add:
        args += ["then", "discard"] if policy.action == "discard" else ["then", "rate-limit", f"{policy.rate:g}"]
    return args


@dataclass
class Mitigator:
    """Which routes are up for one rule (by destination), and when each is due to be withdrawn."""

    policy: Policy
    up: dict[str, tuple[Route, float | None]] = field(default_factory=dict)  # prefix → (route, withdraw at)
    refused: int = 0

    def start(self, prefix: str, signature: dict[str, list] | None = None) -> list[tuple[str, Route]]:
        """A FlowSpec policy that names no protocol or ports matches the attack's signature
        (its top protocol, and its top source ports when that protocol has ports)."""
        if self.policy.kind == "none":
            return []
        if prefix in self.up:  # started again during its hold-down: keep it up
            self.up[prefix] = (self.up[prefix][0], None)
            return []
        if len(self.up) >= self.policy.max_announcements:
            self.refused += 1
            return []
        route = Route(self.policy.kind, prefix, self._matching(signature or {}))
        self.up[prefix] = (route, None)
        return [("announce", route)]

    def _matching(self, signature: dict[str, list]) -> Policy:
        policy = self.policy
        if policy.kind != "flowspec" or policy.protocol is not None or not signature.get("protocols"):
            return policy
        protocol = int(signature["protocols"][0])
        ports = tuple(int(p) for p in signature.get("source_ports", [])[:5] if p) if protocol in (6, 17, 132) else ()
        return replace(policy, protocol=protocol, source_ports=policy.source_ports or ports)

    def end(self, prefix: str, now: float) -> None:
        if prefix in self.up:
            self.up[prefix] = (self.up[prefix][0], now + self.policy.hold_down)

    def due(self, now: float) -> list[tuple[str, Route]]:
        out = [(prefix, route) for prefix, (route, at) in self.up.items() if at is not None and at <= now]
        for prefix, _ in out:
            del self.up[prefix]
        return [("withdraw", route) for _, route in out]
