"""Two real Debian `gobgpd` daemons on loopback, peered over BGP with IPv4/IPv6 unicast and
FlowSpec: waxflow drives the first through its gRPC API (`gobgp`), the second is the peer whose
RIB shows what was announced."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

GOBGPD, GOBGP = shutil.which("gobgpd"), shutil.which("gobgp")
FAMILIES = ("ipv4-unicast", "ipv6-unicast", "ipv4-flowspec", "ipv6-flowspec")


@dataclass
class Speaker:
    address: str
    asn: int
    api_port: int

    def rib(self, family: str) -> dict:
        done = subprocess.run([GOBGP, "-p", str(self.api_port), "-j", "global", "rib", "-a", family],
                              capture_output=True, text=True, timeout=10, check=True)
        return json.loads(done.stdout or "{}")

    def established(self) -> bool:
        done = subprocess.run([GOBGP, "-p", str(self.api_port), "-j", "neighbor"], capture_output=True, text=True,
                              timeout=10)
        return done.returncode == 0 and '"session_state":6' in done.stdout.replace(" ", "")


def _config(me: Speaker, peer: Speaker, port: int) -> str:
    families = "".join(f'\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = "{f}"'
                       for f in FAMILIES)
    return (f'[global.config]\n  as = {me.asn}\n  router-id = "{me.address}"\n  port = {port}\n'
            f'  local-address-list = ["{me.address}"]\n[[neighbors]]\n  [neighbors.config]\n'
            f'    neighbor-address = "{peer.address}"\n    peer-as = {peer.asn}\n'
            f'  [neighbors.transport.config]\n    local-address = "{me.address}"\n    remote-port = {port}'
            f'{families}\n')


def running_pair(workdir: Path) -> Iterator[tuple[Speaker, Speaker]]:
    """(ours, peer), established; stopped afterwards."""
    port = free_port()
    ours, peer = Speaker("127.0.0.1", 64512, free_port()), Speaker("127.0.0.2", 64513, free_port())
    procs = []
    try:
        for me, other in ((ours, peer), (peer, ours)):
            config = workdir / f"gobgpd-{me.asn}.toml"
            config.write_text(_config(me, other, port))
            procs.append(subprocess.Popen([GOBGPD, "-f", str(config), "--api-hosts", f"127.0.0.1:{me.api_port}",
                                           "--pprof-disable", "-p"], stdout=open(workdir / f"gobgpd-{me.asn}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not (ours.established() and peer.established()):
            assert all(p.poll() is None for p in procs), (workdir / "gobgpd-64512.log").read_text()
            assert time.monotonic() < deadline, "the two gobgpd did not establish their session"
            time.sleep(0.3)
        yield ours, peer
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
