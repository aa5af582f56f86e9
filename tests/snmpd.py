"""A real Debian `snmpd` on a loopback port, answering fixed interface names through `override`
lines (for ifIndexes that exist on this host and one that does not), for SNMPv2c and SNMPv3."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

SNMPD = shutil.which("snmpd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
COMMUNITY = "w4xfl0w-ro"
V3_AUTH, V3_PRIV = "auth-pass-123", "priv-pass-456"
# user → net-snmp's (auth, priv) protocol names; waxflow's names are the user's suffix.
V3_USERS = {"v3-sha-aes": ("SHA", "AES"), "v3-sha512-aes256": ("SHA-512", "AES-256"),
            "v3-sha256-aes192": ("SHA-256", "AES-192"), "v3-md5-des": ("MD5", "DES")}
SYS_NAME = "edge-test-1"

# ifIndex → (ifName, ifDescr, ifAlias, ifHighSpeed, ifSpeed); None: not overridden.
# 1 is the host's loopback (its real ifDescr is "lo"); 4242 and 4343 exist on no host.
OVERRIDES: dict[int, tuple[str | None, str | None, str | None, int | None, int | None]] = {
    1: ("Gi0/0/1", None, "Transit: Cogent AS174 [10G]", 10000, None),
    4242: ("xe-1/2/3", "Juniper xe-1/2/3", "PNI: Netflix", 100000, None),
    4343: (None, "GigabitEthernet0/3", None, None, 1_000_000_000),
}
COLUMNS = ("1.3.6.1.2.1.31.1.1.1.1", "1.3.6.1.2.1.2.2.1.2", "1.3.6.1.2.1.31.1.1.1.18",
           "1.3.6.1.2.1.31.1.1.1.15", "1.3.6.1.2.1.2.2.1.5")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = _ipv6_loopback()


def _config(port: int) -> str:
    listen = f"udp:127.0.0.1:{port}" + (f",udp6:[::1]:{port}" if IPV6 else "")
    lines = [f"agentAddress {listen}", f"rocommunity {COMMUNITY} 127.0.0.1",
             f"sysName {SYS_NAME}"]
    if IPV6:
        lines.append(f"rocommunity6 {COMMUNITY} ::1")
    for user, (auth, priv) in V3_USERS.items():
        lines += [f'createUser {user} {auth} "{V3_AUTH}" {priv} "{V3_PRIV}"', f"rouser {user} priv"]
    for index, values in OVERRIDES.items():
        for oid, value in zip(COLUMNS, values):
            if value is None:
                continue
            kind, text = ("octet_str", f'"{value}"') if isinstance(value, str) else ("unsigned", value)
            lines.append(f"override .{oid}.{index} {kind} {text}")
    return "\n".join(lines) + "\n"


class SnmpAgent:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen | None = None
        (workdir / "snmpd.conf").write_text(_config(self.port))

    def start(self) -> None:
        log = self.workdir / "snmpd.log"
        log.write_text("")
        self.proc = subprocess.Popen(
            [SNMPD, "-f", "-C", "-c", str(self.workdir / "snmpd.conf"), "-Lf", str(log),
             "-p", str(self.workdir / "snmpd.pid")],
            env={**os.environ, "SNMP_PERSISTENT_DIR": str(self.workdir / "persist")},
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "NET-SNMP version" not in log.read_text(errors="replace"):
            assert self.proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "snmpd did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


def running_agent(tmp_path: Path) -> Iterator[SnmpAgent]:
    """The `snmp_agent` fixture (tests/conftest.py): started, stopped after the test."""
    if SNMPD is None:
        pytest.skip(reason="Debian snmpd is not installed (scripts/apt-packages.txt)")
    agent = SnmpAgent(tmp_path)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
