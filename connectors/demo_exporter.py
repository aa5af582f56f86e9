"""`waxflow demo-exporter`: the demo routers (flows/demo.py) sending to the inlet's listeners.

Each router sends from its own loopback address (127.0.1.x), so the collector sees distinct
exporters, when the inlet runs on this machine; `--target HOST` sends to another one, from this
machine's address (the compose stack's `demo` profile runs one router per container, `--router
NAME`, each at its own address). NetFlow v9 goes to the `netflow` listener, IPFIX to `ipfix`
(else the first netflow listener), sFlow to the first sflow listener; an sFlow router names as
its agent the address its datagrams leave from, as the decoder keys sFlow exporters on it.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flows import demo
from flows.settings import Settings

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between sends: the rate is spread evenly over the second


class DemoError(RuntimeError):
    """The demo exporter cannot run as asked (the message says why)."""


@dataclass
class Target:
    router: demo.Router
    address: tuple[str, int]


def _listener_for(settings: Settings, protocol: str, host: str | None = None) -> tuple[str, int]:
    decoder = "sflow" if protocol == "sflow" else "netflow"
    candidates = [listener for listener in settings.inlet.listeners if listener.decoder == decoder]
    if not candidates:
        raise DemoError(f"no {decoder} listener in inlet.listeners for the demo's {protocol} router")
    preferred = {"netflow9": "netflow", "ipfix": "ipfix"}.get(protocol)
    chosen = next((item for item in candidates if item.name == preferred), candidates[0])
    if host is None:
        host = chosen.address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return host, chosen.port


def targets(settings: Settings, host: str | None = None, routers: Sequence[str] = ()) -> list[Target]:
    """Where each demo router (those named in `routers`, default all) sends: the inlet's
    listeners on this machine, or on `host`."""
    try:
        chosen = [demo.router(name) for name in dict.fromkeys(routers)] or list(demo.ROUTERS)
    except ValueError as err:
        raise DemoError(str(err)) from None
    if host is not None:
        try:
            host = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
        except socket.gaierror as err:
            raise DemoError(f"cannot resolve {host}: {err.strerror}") from None
    return [Target(router, _listener_for(settings, router.protocol, host)) for router in chosen]


class DemoExporter:
    """Sends `rate` flows per second (times the day/night shape) spread over the routers."""

    def __init__(self, targets: list[Target], rate: float, seed: int | None = None,
                 shape: bool = True, attack: str | None = None, attack_rate: float = 50.0) -> None:
        if attack is not None and attack not in demo.ATTACKS:
            raise DemoError(f"attack is one of {', '.join(demo.ATTACKS)}")
        self.attack, self.attack_rate = attack, attack_rate  # (sampled flows/s, from the first router)
        self.targets = targets
        self.rate = rate
        self.shape = shape
        self.traffic = demo.Traffic(seed)
        self.rng = random.Random(seed)
        self.boot_ms = int(time.time() * 1000)
        self.sequence = {t.router.name: 0 for t in targets}
        self.samples = {t.router.name: 0 for t in targets}
        self.sent_flows = 0
        self.sent_datagrams = 0
        self.sockets = {t.router.name: self._socket(t) for t in targets}
        # The address each router's datagrams leave from: what the collector sees as the exporter.
        self.agents = {name: sock.getsockname()[0] for name, sock in self.sockets.items()}

    @staticmethod
    def _socket(target: Target) -> socket.socket:
        family = socket.AF_INET6 if ":" in target.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # Only on loopback can a router send from its own 127.0.1.x address; elsewhere it sends
        # from this machine's (or container's) address.
        step = f"send from {target.router.address}"
        try:
            if family == socket.AF_INET and ipaddress.ip_address(target.address[0]).is_loopback:
                sock.bind((target.router.address, 0))  # the router's own address: a distinct exporter
            step = f"send to {target.address[0]}:{target.address[1]}"
            sock.connect(target.address)  # fixes the source address (sFlow's agent) before any send
        except OSError as err:
            sock.close()
            raise DemoError(f"{target.router.name}: cannot {step}: {err.strerror}") from None
        return sock

    def _datagrams(self, router: demo.Router, flows: list[demo.Flow], now_ms: int) -> list[bytes]:
        out = []
        size = demo.SAMPLES_PER_DATAGRAM if router.protocol == "sflow" else demo.FLOWS_PER_DATAGRAM
        for chunk in demo.chunks(flows, size):
            seq = self.sequence[router.name]
            if router.protocol == "netflow9":
                out.append(demo.netflow_v9(chunk, boot_ms=self.boot_ms, now_ms=now_ms, sequence=seq,
                                           source_id=0, sampling=router.sampling))
                self.sequence[router.name] += 1
            elif router.protocol == "ipfix":
                out.append(demo.ipfix(chunk, now_ms=now_ms, sequence=seq, domain=0, sampling=router.sampling))
                self.sequence[router.name] += len(chunk)
            else:
                out.append(demo.sflow(chunk, agent=self.agents[router.name], uptime_ms=now_ms - self.boot_ms,
                                      sequence=seq, sample_sequence=self.samples[router.name],
                                      sampling=router.sampling))
                self.sequence[router.name] += 1
                self.samples[router.name] += len(chunk)
        return out

    def tick(self, now: float) -> None:
        """One tick's worth of flows for every router (a random rounding keeps the mean rate)."""
        level = demo.diurnal(now) if self.shape else 1.0
        share = self.rate * level * TICK / len(self.targets)
        now_ms = int(now * 1000)
        for target in self.targets:
            count = int(share) + (1 if self.rng.random() < share % 1 else 0)
            if not count:
                continue
            flows = self.traffic.flows(target.router, count, now_ms)
            if self.attack is not None and target is self.targets[0]:
                share_of_attack = self.attack_rate * TICK
                extra = int(share_of_attack) + (1 if self.rng.random() < share_of_attack % 1 else 0)
                flows += self.traffic.attack(self.attack, target.router, extra, now_ms)
            for datagram in self._datagrams(target.router, flows, now_ms):
                try:
                    self.sockets[target.router.name].send(datagram)
                except OSError as err:  # nobody listening yet (ICMP refused): the demo goes on
                    log.debug("demo: send to %s failed: %s", target.address, err)
                    continue
                self.sent_datagrams += 1
            self.sent_flows += count

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        started = time.monotonic()
        next_tick = started
        while not stop.is_set() and (duration is None or time.monotonic() - started < duration):
            self.tick(time.time())
            next_tick += TICK
            stop.wait(max(0.0, next_tick - time.monotonic()))

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
