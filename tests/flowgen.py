"""Test helpers: generate pcaps of known traffic with scapy, run real exporters over them.

- `make_pcap(path, ...)` writes Ethernet frames (IPv4 and IPv6; TCP, UDP, ICMP) for many
  5-tuples and returns the expected per-5-tuple (packets, L3 bytes) totals.
- `run_softflowd(pcap, version, ...)` and `run_pmacct(pcap, plugin, version, ...)` run the
  Debian exporters over the pcap towards a UDP socket on loopback and return the datagrams
  they sent as (payload, exporter, received) tuples, ready for FlowDecoder.decode_many.
- `send_softflowd(pcap, version, port)` and `send_pmacct(pcap, port, ...)` run the same exporters
  towards any UDP port, e.g. a running inlet.

Used by the decoder tests, the decode benchmark and the outlet end-to-end tests.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

Key = tuple[str, str, int, int, int]  # src, dst, proto, src port, dst port (0, 0 for ICMP)
Totals = dict[Key, list[int]]  # key → [packets, bytes]

ICMP_PROTOS = (1, 58)
BASE_TIME = 1_700_000_000.0


def flow_key(src: str, dst: str, proto: int, sport: int, dport: int) -> Key:
    """The comparison key: addresses normalised, ICMP ports ignored (exporters encode type/code)."""
    src, dst = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
    if isinstance(ipaddress.ip_address(src), ipaddress.IPv6Address) and ipaddress.ip_address(src).ipv4_mapped:
        src = str(ipaddress.ip_address(src).ipv4_mapped)
    if isinstance(ipaddress.ip_address(dst), ipaddress.IPv6Address) and ipaddress.ip_address(dst).ipv4_mapped:
        dst = str(ipaddress.ip_address(dst).ipv4_mapped)
    if proto in ICMP_PROTOS:
        sport = dport = 0
    return (src, dst, int(proto), int(sport), int(dport))


def _packet(rng: random.Random, src: str, dst: str, proto: int, sport: int, dport: int, size: int):
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    v6 = ":" in src
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, ttl=64)
    if proto == 6:
        l4 = TCP(sport=sport, dport=dport, flags="PA", seq=rng.randrange(1 << 32))
    elif proto == 17:
        l4 = UDP(sport=sport, dport=dport)
    elif v6:
        l4 = ICMPv6EchoRequest(id=sport, seq=1)
    else:
        l4 = ICMP(type=8, code=0, id=sport)
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4 / Raw(b"x" * size)


def make_pcap(path: str | os.PathLike, flows: int = 120, packets_per_flow: tuple[int, int] = (1, 8),
              seed: int = 7, start: float = BASE_TIME, spacing: float = 0.001,
              filler: int = 0) -> Totals:
    """Write a pcap of `flows` 5-tuples (mixed IPv4/IPv6, TCP/UDP/ICMP) and return the expected
    per-key totals [packets, L3 bytes]. Packets of the flows are interleaved; `filler` adds that
    many single-packet UDP flows (counted in the totals too) at the end, e.g. to push out the
    last datagram of exporters that hold back a partly filled one."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapWriter

    rng = random.Random(seed)
    specs = []
    for i in range(flows):
        v6 = i % 4 == 3
        src = f"2001:db8:{i % 7:x}::{i + 1:x}" if v6 else f"10.{i % 5}.{i // 250}.{i % 250 + 1}"
        dst = f"2001:db8:ff::{i % 11 + 1:x}" if v6 else f"192.0.2.{i % 50 + 1}"
        proto = (6, 17, 58 if v6 else 1)[i % 3]
        sport, dport = 1024 + i, (80, 443, 53, 123)[i % 4]
        if proto in ICMP_PROTOS:
            dport = 0
        count = rng.randint(*packets_per_flow)
        specs.append([src, dst, proto, sport, dport, count])
    for j in range(filler):
        specs.append([f"198.51.100.{j % 250 + 1}", "203.0.113.1", 17, 20000 + j, 9, 1])
    order = [i for i, spec in enumerate(specs) for _ in range(spec[5])]
    rng.shuffle(order[: len(order) - filler])  # filler stays last
    totals: Totals = defaultdict(lambda: [0, 0])
    with PcapWriter(str(path), linktype=1, sync=True) as writer:
        for n, i in enumerate(order):
            src, dst, proto, sport, dport, _ = specs[i]
            packet = _packet(rng, src, dst, proto, sport, dport, rng.randint(0, 600))
            packet.time = start + n * spacing
            l3 = packet[IPv6] if ":" in src else packet[IP]
            entry = totals[flow_key(src, dst, proto, sport, dport)]
            entry[0] += 1
            entry[1] += len(bytes(l3))
            writer.write(packet)
    return dict(totals)


# -- running exporters -------------------------------------------------------------------------

class Collector:
    """A UDP socket on loopback that records every datagram received, from a thread."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, 32 << 20)
                break
            except OSError:
                continue
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[tuple[bytes, str, float]] = []
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams.append((payload, address[0], time.time()))
            self.last = time.monotonic()

    def drain(self, quiet: float = 0.5, limit: float = 10.0) -> list[tuple[bytes, str, float]]:
        """Wait until nothing arrived for `quiet` seconds (at most `limit`), then stop."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self.last < quiet:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.datagrams


def have(binary: str) -> bool:
    return shutil.which(binary) is not None or os.path.exists(f"/usr/sbin/{binary}")


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _run(command: list[str], timeout: float, cwd: str) -> None:
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise RuntimeError(f"{command[0]} did not finish in {timeout}s: {output[-2000:]!r}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode not in (0, None):
        raise RuntimeError(f"{command} exited {process.returncode}: {output[-2000:]!r}")


def run_softflowd(pcap: str | os.PathLike, version: int | str, *, bidirectional: bool = False,
                  sampling: int = 0, extra: tuple[str, ...] = (), timeout: float = 60.0
                  ) -> list[tuple[bytes, str, float]]:
    """Run `softflowd -r pcap` exporting NetFlow `version` (5, 9, 10) to a loopback collector;
    all flows are expired at the end of the file. Returns the datagrams received."""
    collector = Collector()
    try:
        send_softflowd(pcap, version, collector.port, bidirectional=bidirectional,
                       sampling=sampling, extra=extra, timeout=timeout)
    finally:
        datagrams = collector.drain()
    return datagrams


def send_softflowd(pcap: str | os.PathLike, version: int | str, port: int, *,
                   host: str = "127.0.0.1", bidirectional: bool = False, sampling: int = 0,
                   extra: tuple[str, ...] = (), timeout: float = 60.0) -> None:
    """Run `softflowd -r pcap` exporting NetFlow `version` (5, 9, 10) to host:port (a collector
    of ours, or a running inlet); returns once softflowd has sent everything and exited."""
    control = _short_control_path()
    with tempfile.TemporaryDirectory(prefix="sfd") as tmp:
        command = [_binary("softflowd"), "-r", str(pcap), "-a", "-v", str(version),
                   "-n", f"{host}:{port}", "-c", control, "-p", f"{tmp}/pid", "-6",
                   "-T", "full"]
        if bidirectional:
            command.append("-b")
        if sampling:
            command += ["-s", str(sampling)]
        command += list(extra)
        try:
            _run(command, timeout, tmp)
        finally:
            if os.path.exists(control):
                os.unlink(control)


def _short_control_path() -> str:
    """softflowd 1.1.0 (Debian 12), reading a pcap, blocks in accept() on its control socket
    when that socket's path is longer than 12 characters: use /tmp/sfXXXX."""
    while True:
        path = f"/tmp/sf{random.randrange(1 << 16):04x}"
        if not os.path.exists(path):
            return path


PMACCT_AGGREGATE = "src_host, dst_host, src_port, dst_port, proto, tos"


def run_pmacct(pcap: str | os.PathLike, plugin: str = "nfprobe", version: int = 10, *,
               sampling: int = 0, extra: dict[str, str] | None = None, timeout: float = 60.0
               ) -> list[tuple[bytes, str, float]]:
    """Run pmacctd over the pcap with the nfprobe (NetFlow `version` 5/9/10) or sfprobe (sFlow)
    plugin towards a loopback collector. pmacctd exits at the end of the file and flushes its
    caches; sfprobe holds back its last partly filled datagram (add filler traffic)."""
    collector = Collector()
    try:
        send_pmacct(pcap, collector.port, plugin, version, sampling=sampling, extra=extra,
                    timeout=timeout)
    finally:
        datagrams = collector.drain()
    return datagrams


def send_pmacct(pcap: str | os.PathLike, port: int, plugin: str = "nfprobe", version: int = 10, *,
                host: str = "127.0.0.1", sampling: int = 0, extra: dict[str, str] | None = None,
                timeout: float = 60.0) -> None:
    """Run pmacctd over the pcap (nfprobe or sfprobe plugin, as `run_pmacct`) towards host:port;
    returns once pmacctd has sent everything and exited. Its log lands in run_pmacct.last_log."""
    with tempfile.TemporaryDirectory(prefix="pmd") as tmp:
        config = {
            "daemonize": "false",
            "pcap_savefile": str(pcap),
            "plugins": f"{plugin}[probe]",
            "aggregate[probe]": PMACCT_AGGREGATE,
            "pidfile": f"{tmp}/pid",
            "logfile": f"{tmp}/log",
        }
        if plugin == "nfprobe":
            config.update({"nfprobe_receiver[probe]": f"{host}:{port}",
                           "nfprobe_version[probe]": str(version),
                           "nfprobe_timeouts[probe]": "tcp=1:udp=1:icmp=1:general=1:maxlife=60:expint=1"})
        else:
            config.update({"sfprobe_receiver[probe]": f"{host}:{port}",
                           "sfprobe_agentip[probe]": "127.0.0.1"})
        if sampling:
            config["sampling_rate"] = str(sampling)
        config.update(extra or {})
        path = Path(tmp, "pmacctd.conf")
        path.write_text("".join(f"{k}: {v}\n" for k, v in config.items()))
        try:
            _run([_binary("pmacctd"), "-f", str(path)], timeout, tmp)
        except RuntimeError as err:  # pmacctd says why in its log file, not on stdout
            log = Path(tmp, "log")
            text = log.read_text() if log.exists() else ""
            # At the end of the file the core and the plugin sometimes race to shut down and
            # the core exits 1 though the plugin finished exporting: not a failure.
            if not _pmacct_clean_end(text):
                raise RuntimeError(f"{err}; log: {text[-2000:] or '(none)'}") from None
        finally:
            log = Path(tmp, "log")
            run_pmacct.last_log = log.read_text() if log.exists() else ""


run_pmacct.last_log = ""


def _pmacct_clean_end(log: str) -> bool:
    """Whether pmacctd's plugin shut down on its own at the end of the capture."""
    return "Shutting down on user request" in log and "ERROR" not in log


def decoded_totals(batch, *, multiply_sampling: bool = False) -> Totals:
    """Per-key [packets, bytes] totals of a decoded flow batch (for comparisons)."""
    columns = batch.to_pydict()
    totals: Totals = defaultdict(lambda: [0, 0])
    for i in range(batch.num_rows):
        key = flow_key(str(ipaddress.IPv6Address(columns["SrcAddr"][i])),
                       str(ipaddress.IPv6Address(columns["DstAddr"][i])),
                       columns["Proto"][i], columns["SrcPort"][i], columns["DstPort"][i])
        factor = max(columns["SamplingRate"][i], 1) if multiply_sampling else 1
        totals[key][0] += columns["Packets"][i] * factor
        totals[key][1] += columns["Bytes"][i] * factor
    return dict(totals)


def run_nfcapd_nfreplay(datagrams: list[tuple[bytes, str, float]], version: int, port: int, *,
                        timeout: float = 60.0) -> list[tuple[bytes, str, float]]:
    """Store exporter datagrams with nfdump's `nfcapd` (listening on loopback `port`), then
    replay the file it wrote with `nfreplay -v version` (5 or 9) towards a loopback collector.
    Returns the datagrams nfreplay sent."""
    with tempfile.TemporaryDirectory(prefix="nfd") as tmp:
        nfcapd = subprocess.Popen([_binary("nfcapd"), "-w", tmp, "-b", "127.0.0.1", "-p", str(port), "-t", "3600"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_udp_bound(port, nfcapd, timeout)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for payload, _, _ in datagrams:
                    sender.sendto(payload, ("127.0.0.1", port))
                    time.sleep(0.001)  # nfcapd reads one datagram at a time: do not overrun it
            time.sleep(0.5)
            nfcapd.terminate()  # nfcapd writes and closes its file on SIGTERM
            output, _ = nfcapd.communicate(timeout=timeout)
        finally:
            if nfcapd.poll() is None:
                nfcapd.kill()
                nfcapd.wait()
        files = sorted(Path(tmp).rglob("nfcapd.2*"))
        if not files:
            raise RuntimeError(f"nfcapd wrote no file: {output[-2000:]!r}")
        collector = Collector()
        try:
            _run([_binary("nfreplay"), "-r", str(files[0]), "-H", "127.0.0.1", "-p", str(collector.port),
                  "-v", str(version)], timeout, tmp)
        finally:
            replayed = collector.drain()
    return replayed


def _wait_udp_bound(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Wait until some socket is bound to UDP `port` on this host (read from /proc/net/udp)."""
    suffix = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited {process.returncode}: {process.stdout.read()[-2000:]!r}")
        with open("/proc/net/udp") as table:
            if any(line.split()[1].endswith(suffix) for line in table.readlines()[1:]):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing bound UDP port {port} within {timeout}s")


def write_capture(path: str | os.PathLike, exports: dict[str, list[tuple[bytes, str, float]]]) -> None:
    """A pcap of exporter datagrams as a collector's interface sees them: for each source
    address, its datagrams (UDP to port 2055), each frame at its receive time. Input for
    `waxflow decode`."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    frames = []
    for source, datagrams in exports.items():
        for payload, _, received in datagrams:
            frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=source, dst="192.0.2.100") / UDP(sport=9995, dport=2055) / payload
            frame.time = received
            frames.append(frame)
    wrpcap(str(path), frames)


def jsonl_totals(rows: list[dict], exporter: str | None = None) -> Totals:
    """Per-key [packets, bytes] totals of `waxflow decode --format jsonl` rows (of one exporter)."""
    totals: Totals = defaultdict(lambda: [0, 0])
    for row in rows:
        if exporter is None or row["ExporterAddress"] == exporter:
            entry = totals[flow_key(row["SrcAddr"], row["DstAddr"], row["Proto"], row["SrcPort"], row["DstPort"])]
            entry[0] += row["Packets"]
            entry[1] += row["Bytes"]
    return dict(totals)
