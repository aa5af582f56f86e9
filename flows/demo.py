"""The demo network: simulated routers, their traffic, and encoders for what they export.

Three edge routers export NetFlow v9, IPFIX and sFlow v5; each has transit, PNI and IX
interfaces (descriptions like `Transit: Cogent AS174 [100G]`) and customer-facing ones. Traffic
comes from a weighted mix of well-known networks (AS numbers, countries) to the demo's own
customer prefixes, over realistic protocols and ports, with a day/night shape.

`demo_enrichment()` is the metadata the demo configuration wires in (`enrichment.static` for
exporter and interface names, `enrichment.networks` for AS numbers, countries and names,
`enrichment.classifiers` for sites, connectivity, providers and boundaries), so the stored flows
carry names, not numbers. Pure logic: connectors/demo_exporter.py sends the bytes.

Where the routers export from: 127.0.1.x on one machine (`waxflow up --demo`); in the compose
stack's `demo` profile each router is a container at a fixed address of the stack's network
(`compose_addresses()`), and the demo block of compose/dataflows.yaml is generated from this
module (`waxflow demo-block`; tests/test_compose.py fails when it is stale).

Encoders are struct-based: the demo needs a few thousand flows per second, built per record.
"""

from __future__ import annotations

import ipaddress
import math
import random
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import yaml


@dataclass(frozen=True)
class Interface:
    ifindex: int
    name: str
    description: str
    speed: int  # Mbps
    kind: str  # transit, pni, ix, customers


@dataclass(frozen=True)
class Router:
    name: str
    address: str  # loopback source address the router exports from (127.0.1.x)
    protocol: str  # netflow9, ipfix, sflow
    sampling: int
    site: str
    country: str
    customers: str  # the customer prefix behind this router
    ix: str  # the exchange it peers at


@dataclass(frozen=True)
class Peer:
    """A remote network traffic comes from (or goes to)."""

    name: str
    asn: int
    prefix: str
    country: str
    weight: float
    via: str  # transit, pni, ix: the kind of interface it arrives on
    profile: str  # video, web, cloud, mixed


LOCAL_AS = 64500

ROUTERS: tuple[Router, ...] = (
    Router("edge1.par", "127.0.1.1", "netflow9", 1000, "par", "FR", "192.0.2.0/24", "IX: France-IX Paris"),
    Router("edge2.ams", "127.0.1.2", "ipfix", 1000, "ams", "NL", "198.51.100.0/24", "IX: AMS-IX"),
    Router("edge3.fra", "127.0.1.3", "sflow", 2048, "fra", "DE", "203.0.113.0/24", "IX: DE-CIX Frankfurt"),
)

PEERS: tuple[Peer, ...] = (
    Peer("Netflix", 2906, "45.57.0.0/17", "US", 22, "pni", "video"),
    Peer("Google", 15169, "142.250.0.0/15", "US", 18, "pni", "video"),
    Peer("Meta", 32934, "157.240.0.0/16", "IE", 9, "ix", "web"),
    Peer("Cloudflare", 13335, "104.16.0.0/13", "US", 8, "ix", "web"),
    Peer("Akamai", 20940, "23.32.0.0/11", "NL", 8, "ix", "video"),
    Peer("Amazon", 16509, "52.0.0.0/11", "US", 9, "transit", "cloud"),
    Peer("Microsoft", 8075, "20.0.0.0/11", "US", 6, "transit", "cloud"),
    Peer("OVHcloud", 16276, "51.68.0.0/16", "FR", 5, "ix", "cloud"),
    Peer("Deutsche Telekom", 3320, "80.128.0.0/11", "DE", 5, "transit", "mixed"),
    Peer("Orange", 3215, "90.0.0.0/9", "FR", 5, "transit", "mixed"),
    Peer("SoftBank", 17676, "126.0.0.0/8", "JP", 2, "transit", "mixed"),
    Peer("Claro", 28573, "187.0.0.0/12", "BR", 2, "transit", "mixed"),
)

_TRANSITS = (("Cogent", 174), ("Arelion", 1299))


def interfaces(router: Router) -> tuple[Interface, ...]:
    """The same port plan on every router: two transits, two PNIs, one IX, two customer LAGs."""
    return (
        Interface(1, "et-0/0/0", f"Transit: {_TRANSITS[0][0]} AS{_TRANSITS[0][1]} [100G]", 100_000, "transit"),
        Interface(2, "et-0/0/1", f"Transit: {_TRANSITS[1][0]} AS{_TRANSITS[1][1]} [100G]", 100_000, "transit"),
        Interface(3, "et-0/0/2", "PNI: Netflix AS2906 [100G]", 100_000, "pni"),
        Interface(4, "et-0/0/3", "PNI: Google AS15169 [100G]", 100_000, "pni"),
        Interface(5, "et-0/0/4", f"{router.ix} [100G]", 100_000, "ix"),
        Interface(10, "ae0", f"Customers: hosting {router.site}", 400_000, "customers"),
        Interface(11, "ae1", f"Customers: broadband {router.site}", 400_000, "customers"),
    )


def router(name: str) -> Router:
    """The demo router called `name` (ValueError naming the known ones otherwise)."""
    for each in ROUTERS:
        if each.name == name:
            return each
    raise ValueError(f"no demo router {name!r} (known: {', '.join(r.name for r in ROUTERS)})")


def covering_subnet(addresses: Iterable[str]) -> str:
    """The smallest subnet holding every address: scopes the demo's classifiers to its routers."""
    networks = [ipaddress.ip_network(address) for address in addresses]
    subnet = networks[0]
    while not all(network.subnet_of(subnet) for network in networks):
        subnet = subnet.supernet()
    return str(subnet)


# The demo's classifiers read what the port plan writes: "Transit: Cogent AS174 [100G]" is a
# transit from provider cogent crossing the network's edge; customer ports stay inside.
_EDGE_PORT = r"^(?P<connectivity>Transit|PNI|IX): (?P<provider>[^ ]+)"


def demo_classifiers(subnet: str) -> dict:
    """`enrichment.classifiers` for the demo routers, matching only exporters in `subnet`."""
    return {
        "exporter": [{"match": {"subnet": subnet, "name": r"^edge[0-9]+\.(?P<site>[a-z]+)$"},
                      "set": {"site": "$site", "role": "edge", "group": "demo"}}],
        "interface": [
            {"match": {"exporter_subnet": subnet, "description": _EDGE_PORT},
             "set": {"connectivity": "$connectivity", "provider": "$provider", "boundary": "external"}},
            {"match": {"exporter_subnet": subnet, "description": "^Customers: "},
             "set": {"connectivity": "customers", "boundary": "internal"}},
        ],
    }


def demo_enrichment(addresses: Mapping[str, str] | None = None) -> dict:
    """`enrichment.static`, `networks` and `classifiers` for the demo routers and networks;
    `addresses` maps router names to where they export from (default: their 127.0.1.x)."""
    address = {router.name: router.address for router in ROUTERS} | dict(addresses or {})
    static = {
        f"{address[router.name]}/32": {
            "name": router.name,
            "interfaces": {i.ifindex: {"name": i.name, "description": i.description, "speed": i.speed}
                           for i in interfaces(router)},
        }
        for router in ROUTERS
    }
    networks = {peer.prefix: {"name": peer.name, "asn": peer.asn, "country": peer.country, "role": "internet"}
                for peer in PEERS}
    for router in ROUTERS:
        networks[router.customers] = {"name": f"customers-{router.site}", "asn": LOCAL_AS,
                                      "country": router.country, "role": "customers", "site": router.site}
    classifiers = demo_classifiers(covering_subnet(address[router.name] for router in ROUTERS))
    return {"static": static, "networks": networks, "classifiers": classifiers}


# --- the compose stack's demo profile -----------------------------------------------------------

# The stack's network (compose/docker-compose.yml). Outside Docker's default address pools
# (172.17-31.0.0/16, 192.168.0.0/16) so it does not collide with the networks Docker creates;
# Docker places the other containers in the upper half, the demo routers sit in the lower one.
COMPOSE_SUBNET = "172.16.89.0/24"
COMPOSE_DYNAMIC_RANGE = "172.16.89.128/25"
COMPOSE_MARKERS = ("  # demo:start", "  # demo:end")


def compose_addresses() -> dict[str, str]:
    """Router name → its container's fixed address in the compose stack (.11, .12, ...)."""
    subnet = ipaddress.ip_network(COMPOSE_SUBNET)
    return {router.name: str(subnet[11 + n]) for n, router in enumerate(ROUTERS)}


def compose_service(router: Router) -> str:
    """The compose service running one router: edge1.par → demo-edge1-par."""
    return "demo-" + router.name.replace(".", "-")


def compose_block() -> str:
    """The demo's enrichment as the YAML lines compose/dataflows.yaml carries under `enrichment:`
    (between the markers)."""
    body = yaml.safe_dump(demo_enrichment(compose_addresses()), sort_keys=False, default_flow_style=None,
                          width=200)
    indented = "".join(f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True))
    return (f"{COMPOSE_MARKERS[0]}  generated by `waxflow demo-block` from flows/demo.py: the demo\n"
            "  # profile's routers (their addresses on the stack's network), their networks and classifiers.\n"
            "  # Everything is scoped to the demo routers' addresses except `networks` (the demo's peers\n"
            "  # and customers): delete this block when real routers send to the stack.\n"
            f"{indented}{COMPOSE_MARKERS[1]}\n")


def with_compose_block(text: str) -> str:
    """compose/dataflows.yaml's text with the demo block replaced by the current one."""
    start, end = (text.index(marker) for marker in COMPOSE_MARKERS)
    end = text.index("\n", end) + 1
    return text[:start] + compose_block() + text[end:]


# --- traffic -----------------------------------------------------------------------------------

class Flow(NamedTuple):
    src: int  # IPv4 as an integer
    dst: int
    proto: int
    sport: int
    dport: int
    in_if: int
    out_if: int
    packets: int
    octets: int
    src_as: int
    dst_as: int
    tos: int
    tcp_flags: int
    src_mask: int
    dst_mask: int
    start_ms: int  # unix ms
    end_ms: int


# (proto, service port, share of flows, packet size range) per traffic profile
_SERVICES = {
    "video": ((6, 443, 0.70, (1200, 1500)), (17, 443, 0.25, (1200, 1350)), (6, 80, 0.05, (1000, 1500))),
    "web": ((6, 443, 0.55, (300, 1500)), (17, 443, 0.35, (200, 1350)), (17, 53, 0.05, (60, 300)),
            (1, 0, 0.05, (64, 128))),
    "cloud": ((6, 443, 0.60, (200, 1500)), (6, 22, 0.10, (80, 400)), (17, 4500, 0.10, (100, 1400)),
              (6, 3389, 0.05, (100, 1200)), (6, 80, 0.15, (200, 1500))),
    "mixed": ((6, 443, 0.45, (100, 1500)), (17, 443, 0.20, (100, 1350)), (6, 80, 0.10, (100, 1500)),
              (17, 53, 0.10, (60, 300)), (1, 0, 0.05, (64, 128)), (47, 0, 0.05, (100, 1400)),
              (6, 25, 0.05, (100, 1500))),
}


ATTACKS = ("amplification", "syn", "carpet")
"""amplification: UDP from DNS/NTP/memcached ports to one customer address; syn: spoofed TCP
SYNs to one customer address; carpet: the amplification spread over the customers' /24."""
AMPLIFIER_SOURCE_PORTS = (53, 123, 11211, 1900, 389)
VICTIM_HOST = 7  # the attacked address: the 7th of the first router's customer prefix


def diurnal(unix_time: float) -> float:
    """Traffic level over the day (UTC): peak 1.0 at 21:00, trough 0.2 at 09:00."""
    hour = (unix_time % 86400) / 3600
    return 0.6 + 0.4 * math.cos(2 * math.pi * (hour - 21) / 24)


class Traffic:
    """Random flows for the demo routers (seeded, so a run can be reproduced)."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.peer_weights = [p.weight for p in PEERS]
        self.ports = {r.name: interfaces(r) for r in ROUTERS}
        self.nets = {p.prefix: ipaddress.ip_network(p.prefix) for p in PEERS}
        self.nets.update({r.customers: ipaddress.ip_network(r.customers) for r in ROUTERS})

    def _address(self, prefix: str) -> tuple[int, int]:
        net = self.nets[prefix]
        return int(net.network_address) + self.rng.randrange(1, net.num_addresses - 1), net.prefixlen

    def _edge_interface(self, router: Router, peer: Peer) -> Interface:
        ports = self.ports[router.name]
        if peer.via == "pni":
            wanted = f"AS{peer.asn}"
            pni = [i for i in ports if i.kind == "pni" and wanted in i.description]
            if pni and self.rng.random() < 0.9:  # a PNI carries most, transit the overflow
                return pni[0]
        if peer.via == "ix" and self.rng.random() < 0.85:
            return next(i for i in ports if i.kind == "ix")
        return self.rng.choice([i for i in ports if i.kind == "transit"])

    def flow(self, router: Router, now_ms: int) -> Flow:
        rng = self.rng
        peer = rng.choices(PEERS, self.peer_weights)[0]
        proto, port, _, sizes = rng.choices(_SERVICES[peer.profile],
                                            [s[2] for s in _SERVICES[peer.profile]])[0]
        remote, remote_mask = self._address(peer.prefix)
        local, local_mask = self._address(router.customers)
        edge = self._edge_interface(router, peer)
        customer = rng.choice([i for i in self.ports[router.name] if i.kind == "customers"])
        packets = max(1, int(rng.paretovariate(1.3)))  # sampled packets: mostly a few, sometimes many
        octets = sum(rng.randint(*sizes) for _ in range(min(packets, 50))) * max(1, packets // 50)
        ephemeral = rng.randint(32768, 60999)
        duration = rng.randint(0, 30_000)
        inbound = rng.random() < 0.8  # content flows in towards the customers
        flags = 0x1B if proto == 6 else 0
        if inbound:
            return Flow(remote, local, proto, port, ephemeral, edge.ifindex, customer.ifindex, packets, octets,
                        peer.asn, LOCAL_AS, 0, flags, remote_mask, local_mask, now_ms - duration, now_ms)
        small = max(64 * packets, octets // 20)  # requests and acknowledgements are small
        return Flow(local, remote, proto, ephemeral, port, customer.ifindex, edge.ifindex, packets, small,
                    LOCAL_AS, peer.asn, 0, flags, local_mask, remote_mask, now_ms - duration, now_ms)

    def flows(self, router: Router, count: int, now_ms: int) -> list[Flow]:
        return [self.flow(router, now_ms) for _ in range(count)]

    def attack(self, kind: str, router: Router, count: int, now_ms: int) -> list[Flow]:
        """Sampled flows of an attack on the router's customers (see ATTACKS)."""
        rng = self.rng
        net = self.nets[router.customers]
        victim = int(net.network_address) + VICTIM_HOST
        edge = next(i for i in self.ports[router.name] if i.kind == "transit")
        customer = next(i for i in self.ports[router.name] if i.kind == "customers")
        out = []
        for _ in range(count):
            source_peer = rng.choices(PEERS, self.peer_weights)[0]
            source, mask = self._address(source_peer.prefix)
            if kind == "syn":  # spoofed sources, one SYN each, to a web server
                flow = Flow(rng.getrandbits(32), victim, 6, rng.randint(1024, 65535), 443, edge.ifindex,
                            customer.ifindex, 1, 60, 0, LOCAL_AS, 0, 0x02, 0, net.prefixlen, now_ms, now_ms)
            else:  # reflected answers from open resolvers, NTP, memcached: big UDP packets
                target = victim if kind == "amplification" else int(net.network_address) + rng.randrange(1, 255)
                packets = rng.randint(5, 15)
                flow = Flow(source, target, 17, rng.choice(AMPLIFIER_SOURCE_PORTS), rng.randint(1024, 65535),
                            edge.ifindex, customer.ifindex, packets, packets * rng.randint(1200, 1468),
                            source_peer.asn, LOCAL_AS, 0, 0, mask, net.prefixlen, now_ms - 1000, now_ms)
            out.append(flow)
        return out


# --- encoders ----------------------------------------------------------------------------------

TEMPLATE_ID = 256

# NetFlow v9 field types (and IPFIX IEs of the same number) with their lengths.
_V9_FIELDS = ((1, 4), (2, 4), (4, 1), (5, 1), (6, 1), (7, 2), (8, 4), (9, 1), (10, 2), (11, 2), (12, 4),
              (13, 1), (14, 2), (16, 4), (17, 4), (21, 4), (22, 4), (34, 4))
_V9_RECORD = struct.Struct("!IIBBBHIBHHIBHIIIII")
_IPFIX_FIELDS = ((1, 8), (2, 8), (4, 1), (5, 1), (6, 2), (7, 2), (8, 4), (9, 1), (10, 4), (11, 2), (12, 4),
                 (13, 1), (14, 4), (16, 4), (17, 4), (152, 8), (153, 8), (34, 4))
_IPFIX_RECORD = struct.Struct("!QQBBHHIBIHIBIIIQQI")
FLOWS_PER_DATAGRAM = 24
SAMPLES_PER_DATAGRAM = 8


def _template(set_id: int, fields: Sequence[tuple[int, int]]) -> bytes:
    body = struct.pack("!HH", TEMPLATE_ID, len(fields)) + b"".join(struct.pack("!HH", f, n) for f, n in fields)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def _data_set(records: bytes) -> bytes:
    padding = b"\0" * (-(4 + len(records)) % 4)
    return struct.pack("!HH", TEMPLATE_ID, 4 + len(records) + len(padding)) + records + padding


def netflow_v9(flows: Sequence[Flow], *, boot_ms: int, now_ms: int, sequence: int, source_id: int,
               sampling: int) -> bytes:
    """One NetFlow v9 export packet: the template, then the flows (times relative to boot)."""
    records = b"".join(
        _V9_RECORD.pack(f.octets, f.packets, f.proto, f.tos, f.tcp_flags, f.sport, f.src, f.src_mask, f.in_if,
                        f.dport, f.dst, f.dst_mask, f.out_if, f.src_as, f.dst_as,
                        (f.end_ms - boot_ms) & 0xFFFFFFFF, (f.start_ms - boot_ms) & 0xFFFFFFFF, sampling)
        for f in flows)
    header = struct.pack("!HHIIII", 9, 1 + len(flows), (now_ms - boot_ms) & 0xFFFFFFFF, now_ms // 1000,
                         sequence, source_id)
    return header + _template(0, _V9_FIELDS) + _data_set(records)


def ipfix(flows: Sequence[Flow], *, now_ms: int, sequence: int, domain: int, sampling: int) -> bytes:
    """One IPFIX message: the template set, then the data set."""
    records = b"".join(
        _IPFIX_RECORD.pack(f.octets, f.packets, f.proto, f.tos, f.tcp_flags, f.sport, f.src, f.src_mask, f.in_if,
                           f.dport, f.dst, f.dst_mask, f.out_if, f.src_as, f.dst_as, f.start_ms, f.end_ms,
                           sampling)
        for f in flows)
    body = _template(2, _IPFIX_FIELDS) + _data_set(records)
    return struct.pack("!HHIII", 10, 16 + len(body), now_ms // 1000, sequence, domain) + body


def _packet_header(f: Flow, size: int) -> bytes:
    """Ethernet + IPv4 + TCP/UDP/other header of one sampled packet of the flow."""
    ether = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    ip = struct.pack("!BBHHHBBHII", 0x45, f.tos, size, 0, 0x4000, 64, f.proto, 0, f.src, f.dst)
    if f.proto == 6:
        l4 = struct.pack("!HHIIBBHHH", f.sport, f.dport, 0, 0, 0x50, f.tcp_flags, 65535, 0, 0)
    elif f.proto == 17:
        l4 = struct.pack("!HHHH", f.sport, f.dport, max(8, size - 20), 0)
    else:
        l4 = b"\0" * 8
    return ether + ip + l4


def sflow(flows: Sequence[Flow], *, agent: str, uptime_ms: int, sequence: int, sample_sequence: int,
          sampling: int) -> bytes:
    """One sFlow v5 datagram: a flow sample (raw packet header) per flow, one sampled packet each.
    `agent` (IPv4 or IPv6) names the exporter: the decoder keys sFlow on it, not on the source."""
    samples = []
    for n, f in enumerate(flows):
        size = max(64, min(1500, f.octets // f.packets))
        header = _packet_header(f, size)
        padded = header + b"\0" * (-len(header) % 4)
        record = struct.pack("!IIII", 1, size + 14 + 4, 4, len(header)) + padded  # ethernet, frame, stripped FCS
        record = struct.pack("!II", 1, len(record)) + record
        sample = struct.pack("!IIIIIIII", sample_sequence + n, f.in_if, sampling,
                             (sample_sequence + n) * sampling, 0, f.in_if, f.out_if, 1) + record
        samples.append(struct.pack("!II", 1, len(sample)) + sample)
    address = ipaddress.ip_address(agent)
    header = struct.pack("!II", 5, 1 if address.version == 4 else 2) + address.packed + struct.pack(
        "!IIII", 0, sequence, uptime_ms & 0xFFFFFFFF, len(samples))
    return header + b"".join(samples)


def chunks(items: Sequence[Flow], size: int) -> Iterable[Sequence[Flow]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
