"""The UDP source on real loopback sockets: spreading, timestamps, drops, bad input, bind errors.

The source's partitions are built and read directly here (what Bytewax does on each worker);
tests/test_inlet_flow.py runs the whole dataflow.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bpf import loader
from connectors import metrics as metrics_mod
from connectors.udp import ListenerError, UDPPartition, UDPSource
from flows.envelope import Envelope, address_bytes, decode
from flows.settings import Listener
from tests.conftest import free_port
from tests.inlet_process import TEST_BPFFS

DATAGRAMS = 10_000


def listener(port: int, **extra) -> Listener:
    return Listener(name=extra.pop("name", "netflow"), address="127.0.0.1", port=port,
                    decoder="netflow", **extra)


@contextmanager
def workers(lst: Listener, count: int, balancing: str,
            tmp_path: Path | None = None) -> Iterator[list[UDPPartition]]:
    bpffs = TEST_BPFFS
    source = UDPSource([lst], balancing=balancing, bpffs=bpffs, max_batch=100_000)
    parts = [source.build("receive", index, count) for index in range(count)]
    try:
        yield parts
    finally:
        for part in parts:
            part.close()


def send(port: int, payloads: list[bytes]) -> tuple[int, int]:
    """From ONE socket (one fixed 4-tuple); returns (time before, time after) in ns."""
    before = time.time_ns()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        for payload in payloads:
            tx.sendto(payload, ("127.0.0.1", port))
    return before, time.time_ns()


def read_all(parts: list[UDPPartition], expect: int,
             timeout: float = 10.0) -> list[list[Envelope]]:
    """Envelopes per worker, decoded, reading until `expect` arrived or the time is up."""
    got: list[list[Envelope]] = [[] for _ in parts]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < expect and time.monotonic() < deadline:
        for index, part in enumerate(parts):
            for batch in part.next_batch():
                got[index].extend(map(decode, batch))
        time.sleep(0.01)
    return got


def group_mode(port: int, count: int, balancing: str) -> loader.ListenerGroup:
    return loader.group_for(f"127.0.0.1:{port}", count, balancing,
                            TEST_BPFFS)


# --- spreading over 4 workers ------------------------------------------------------------------

def test_ebpf_spreads_one_source_evenly() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with workers(listener(port), 4, "auto") as parts:
        group = group_mode(port, 4, "auto")
        if group.mode != "ebpf":
            pytest.skip(reason=f"eBPF balancing does not load here: {group.reason} "
                        f"(run scripts/setup-ebpf.sh as root)")
        send(port, [b"x%d" % i for i in range(DATAGRAMS)])
        counts = [len(got) for got in read_all(parts, DATAGRAMS)]
    assert sum(counts) == DATAGRAMS
    for count in counts:
        assert abs(count - DATAGRAMS / 4) <= DATAGRAMS / 4 * 0.10, counts


def test_kernel_hash_pins_one_source_to_one_socket() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with workers(listener(port), 4, "hash") as parts:
        send(port, [b"x%d" % i for i in range(DATAGRAMS)])
        counts = sorted(len(got) for got in read_all(parts, DATAGRAMS))
    assert counts == [0, 0, 0, DATAGRAMS]


def test_classic_bpf_spreads_within_20_percent() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with workers(listener(port), 4, "cbpf") as parts:
        assert group_mode(port, 4, "cbpf").mode == "cbpf"
        send(port, [b"x%d" % i for i in range(DATAGRAMS)])
        counts = [len(got) for got in read_all(parts, DATAGRAMS)]
    assert sum(counts) == DATAGRAMS
    for count in counts:
        assert abs(count - DATAGRAMS / 4) <= DATAGRAMS / 4 * 0.20, counts


def test_ebpf_requested_but_impossible_is_a_clear_error(tmp_path: Path) -> None:
    """A bpffs path that cannot be used stops startup when `balancing: ebpf` is explicit..."""
    port = free_port(socket.SOCK_DGRAM)
    blocker = tmp_path / "file"
    blocker.write_text("")
    source = UDPSource([listener(port)], balancing="ebpf", bpffs=blocker / "sub")
    with pytest.raises(loader.BalancingError, match="eBPF balancing requested but unavailable"):
        source.build("receive", 0, 1)


def test_auto_falls_back_to_classic_bpf_and_says_why(tmp_path: Path) -> None:
    """...and `auto` falls back to cbpf, with the reason in the group (logged at startup)."""
    port = free_port(socket.SOCK_DGRAM)
    blocker = tmp_path / "file"
    blocker.write_text("")
    source = UDPSource([listener(port)], balancing="auto", bpffs=blocker / "sub")
    part = source.build("receive", 0, 2)
    try:
        group = loader.group_for(f"127.0.0.1:{port}", 2, "auto", blocker / "sub")
        assert group.mode == "cbpf"
        assert "ebpf:" in group.reason
        gauge = metrics_mod.inlet_metrics().balancing
        assert gauge.labels("netflow", "cbpf")._value.get() == 1
    finally:
        part.close()


# --- what each datagram carries --------------------------------------------------------------------

def test_kernel_timestamps_exporter_and_bytes() -> None:
    port = free_port(socket.SOCK_DGRAM)
    payloads = [bytes([i % 256]) * (i + 1) for i in range(300)]
    with workers(listener(port), 1, "hash") as parts:
        assert parts[0].sockets[0].kernel_timestamps
        before, after = send(port, payloads)
        got = read_all(parts, len(payloads))[0]
    assert [d.payload for d in got] == payloads
    assert {d.exporter for d in got} == {address_bytes("127.0.0.1")}
    assert all(before <= d.received_ns <= after for d in got)


def test_dual_stack_listener_tells_ipv4_and_ipv6_exporters_apart() -> None:
    """On `::`, IPv4 senders arrive IPv4-mapped and are written as such; IPv6 as they are."""
    port = free_port(socket.SOCK_DGRAM)
    lst = Listener(name="dual", address="::", port=port, decoder="sflow")
    with workers(lst, 1, "hash") as parts:
        sources = {}
        for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_DGRAM) as tx:
                tx.bind((address, 0))
                sources[address] = tx.getsockname()[1]
                tx.sendto(address.encode(), (address, port))
        got = read_all(parts, 2)[0]
    assert {(e.payload.decode(), e.exporter_address, e.exporter_port) for e in got} == {
        (address, address, sender_port) for address, sender_port in sources.items()}
    assert {(e.decoder, e.listener_id) for e in got} == {("sflow", 0)}
    per_exporter = metrics_mod.inlet_metrics().exporter_datagrams
    assert [per_exporter.labels("dual", a)._value.get() for a in sources] == [1, 1]


def test_userspace_timestamps_are_within_the_window() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with workers(listener(port, timestamp_source="userspace"), 1, "hash") as parts:
        assert not parts[0].sockets[0].kernel_timestamps
        before, _ = send(port, [b"a", b"b"])
        got = read_all(parts, 2)[0]
        after = time.time_ns()
    assert len(got) == 2 and all(before <= d.received_ns <= after for d in got)


def test_oversized_and_empty_datagrams() -> None:
    """The largest UDP datagram arrives whole; an empty one is counted and dropped."""
    port = free_port(socket.SOCK_DGRAM)
    largest = bytes(range(256)) * 255 + bytes(range(227))  # 65507 bytes: the IPv4 maximum
    with workers(listener(port, name="edge"), 1, "hash") as parts:
        send(port, [b"", largest, b"", b"after"])
        got = read_all(parts, 2)[0]
    assert [d.payload for d in got] == [largest, b"after"]
    discarded = metrics_mod.inlet_metrics().discarded.labels("edge", "0", "empty")
    assert discarded._value.get() == 2


@pytest.mark.parametrize("stamps", ["kernel", "userspace"])
def test_kernel_drops_are_counted(stamps: str) -> None:
    """A tiny receive buffer overflows; SO_RXQ_OVFL tells how many the kernel dropped (read
    after the timestamp, or alone when there is none)."""
    port = free_port(socket.SOCK_DGRAM)
    lst = listener(port, name=f"tiny_{stamps}", receive_buffer=4096, timestamp_source=stamps)
    with workers(lst, 1, "hash") as parts:
        send(port, [b"z" * 500] * 2000)
        received = len(read_all(parts, 2000, timeout=1.0)[0])
        send(port, [b"last"])  # drops are reported with the next datagram received
        received += len(read_all(parts, 1, timeout=1.0)[0])
    drops = metrics_mod.inlet_metrics().kernel_drops.labels(lst.name, "0")._value.get()
    assert drops > 0
    assert received + drops == 2001


def test_receive_buffer_granted_is_reported() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with workers(listener(port, name="buf", receive_buffer=16 * 1024 * 1024), 1, "hash"):
        gauge = metrics_mod.inlet_metrics().receive_buffer.labels("buf", "0")
        # Root passes net.core.rmem_max with SO_RCVBUFFORCE; others get at most rmem_max.
        assert gauge._value.get() > 0


def test_a_taken_port_is_a_clear_startup_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may join it
        port = holder.getsockname()[1]
        source = UDPSource([listener(port)], balancing="hash")
        with pytest.raises(ListenerError,
                           match=f"listener netflow: cannot bind UDP 127.0.0.1:{port}: "
                                 "Address already in use"):
            source.build("receive", 0, 1)


# --- pinned maps are removed ---------------------------------------------------------------------

def test_clean_stop_unpins_the_socket_map_after_the_last_socket() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with workers(listener(port), 2, "auto") as parts:
        group = group_mode(port, 2, "auto")
        if group.mode != "ebpf":
            pytest.skip(reason=f"eBPF balancing does not load here: {group.reason}")
        pinned = group.path
        assert pinned is not None and pinned.exists()
        parts[0].close()
        assert pinned.exists()        # worker 1's socket still uses it
        parts[1].close()
        assert not pinned.exists()


def test_bpf_clean_removes_only_unused_maps() -> None:
    from click.testing import CliRunner

    from bpf import syscall
    from waxflow.cli import main

    directory = TEST_BPFFS / f"clean-{free_port()}"
    try:
        directory.mkdir(parents=True)
        used_fd, stale_fd = syscall.create_socket_array(2), syscall.create_socket_array(2)
    except OSError as err:
        pytest.skip(reason=f"cannot create pinned socket maps here: {err}")
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        syscall.put_socket(used_fd, 1, holder.fileno())
        for fd, name in ((used_fd, "used"), (stale_fd, "stale")):
            syscall.pin(fd, str(directory / name))
            os.close(fd)
        result = CliRunner().invoke(main, ["bpf", "clean", "--bpffs", str(directory)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in directory.iterdir()) == ["used"]
        assert "1 removed, 1 kept" in result.output
    finally:
        holder.close()   # the kernel takes the socket out of the map: now unused
    removed, kept = loader.clean(directory)
    assert [p.name for p in removed] == ["used"] and kept == []
    assert not directory.exists()


# --- receive slots ------------------------------------------------------------------------------

def test_jumbo_datagrams_keep_their_pages_and_arrive_byte_identical() -> None:
    """9000-byte IPFIX-sized datagrams reuse their slots' pages (no madvise per datagram);
    larger ones give back what is past the kept part, and the slots they used then receive
    smaller datagrams byte-identical (the given-back pages refill as zeros, then get written)."""
    port = free_port(socket.SOCK_DGRAM)
    jumbo = [bytes([n % 256]) * 9000 for n in range(300)]
    huge = [bytes(range(256)) * 120 for _ in range(20)]           # 30,720 bytes
    after = [bytes([255 - n % 256]) * (9000 - n) for n in range(40)]
    with workers(listener(port, name="jumbo"), 1, "hash") as parts:
        ring = parts[0].sockets[0].ring
        send(port, jumbo)
        got = read_all(parts, len(jumbo))[0]
        assert ring.released == 0
        send(port, huge)
        got += read_all(parts, len(huge))[0]
        assert ring.released == len(huge)
        send(port, after)
        got += read_all(parts, len(after))[0]
    assert [d.payload for d in got] == jumbo + huge + after


# --- the pin lock: no inlet joins a map that is being removed -----------------------------------

def reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def left_empty_map(key: str) -> Path:
    """What an inlet that just stopped leaves: its map, pinned, with no socket in it."""
    path = loader.pin_path(TEST_BPFFS, key, 2)
    try:
        os.close(loader.shared_socket_map(path, 2))
    except loader.BalancingError as err:
        pytest.skip(reason=f"cannot pin socket maps here: {err}")
    return path


def opened_group(key: str) -> loader.ListenerGroup:
    """An inlet starting: it opened the pinned map and compiled its program, no socket yet."""
    group = loader.ListenerGroup(key, 2, "ebpf", TEST_BPFFS)
    try:
        group._setup()
    except loader.BalancingError as err:
        pytest.skip(reason=f"eBPF balancing does not load here: {err}")
    return group


def test_map_unpinned_while_an_inlet_starts_is_pinned_again_with_its_socket() -> None:
    from bpf import syscall

    port = free_port(socket.SOCK_DGRAM)
    key = f"127.0.0.1:{port}"
    path = left_empty_map(key)
    starting = opened_group(key)
    assert loader.remove_if_unused(path)          # the stopped inlet's check: still unused
    sock = reuseport_socket(port)
    try:
        assert starting.join(sock, 0) == "ebpf"
        later = loader.shared_socket_map(path, 2)  # a third inlet starting now
        try:
            assert syscall.map_id(later) == syscall.map_id(starting.map_fd)
            assert syscall.holds_socket(later, 0)
        finally:
            os.close(later)
    finally:
        sock.close()
        starting._reset()
        loader.remove_if_unused(path)


def test_inlet_whose_map_was_replaced_meanwhile_joins_the_new_one() -> None:
    from bpf import syscall

    port = free_port(socket.SOCK_DGRAM)
    key = f"127.0.0.1:{port}"
    path = left_empty_map(key)
    starting = opened_group(key)
    assert loader.remove_if_unused(path)
    other = loader.shared_socket_map(path, 2)      # another inlet made and pinned a new map
    first, second = reuseport_socket(port), reuseport_socket(port)
    try:
        syscall.put_socket(other, 1, first.fileno())
        assert starting.join(second, 0) == "ebpf"
        assert syscall.map_id(starting.map_fd) == syscall.map_id(other)
        assert syscall.holds_socket(other, 0) and syscall.holds_socket(other, 1)
    finally:
        first.close()
        second.close()
        os.close(other)
        starting._reset()
        loader.remove_if_unused(path)


def test_removal_waits_for_the_pin_lock_held_by_another_process() -> None:
    import subprocess
    import sys
    import threading

    path = left_empty_map(f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from bpf import loader\n"
         f"with loader.pins_locked(Path({str(path.parent)!r})):\n"
         "    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed: list[bool] = []
        remover = threading.Thread(target=lambda: removed.append(loader.remove_if_unused(path)))
        remover.start()
        remover.join(0.5)
        assert remover.is_alive() and path.exists()   # blocked on the other process's lock
        holder.stdin.close()                          # the other process lets go
        remover.join(10)
        assert removed == [True] and not path.exists()
    finally:
        holder.kill()
        holder.wait()
        loader.remove_if_unused(path)


# --- pacing: a receive buffer capped by net.core.rmem_max does not overflow ---------------------

DEBIAN_RMEM_MAX = 212_992   # what an unprivileged inlet gets on a stock Debian


def bound(port: int) -> bool:
    return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port
               for line in Path("/proc/net/udp").read_text().splitlines()[1:])


@contextmanager
def favoured_thread() -> Iterator[None]:
    """Run the calling thread (the Bytewax worker) at nice -20 where allowed (root): other jobs
    on the shared cores then rarely stall it for milliseconds, which would overflow a small
    buffer whatever the inlet does. What is tested is the inlet's pacing, not the load."""
    tid, before = threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, -20)
    except PermissionError:
        pass
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, before)


def run_small_buffer_burst(rate: int, count: int) -> tuple[int, int, float]:
    """The real Bytewax runtime drives one worker with a Debian-sized receive buffer while a
    separate process sends `count` 1400-byte datagrams at `rate`/s. (received, kernel drops,
    rate the sender reached)."""
    import subprocess
    import sys

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main

    from tests import inlet_process

    port = free_port(socket.SOCK_DGRAM)
    stop = threading.Event()
    lst = listener(port, name=f"small_{port}", receive_buffer=DEBIAN_RMEM_MAX)
    flow = Dataflow("small_buffer")
    batches = op.input("receive", flow, UDPSource([lst], balancing="hash", stop=stop))
    counted: list[int] = []
    op.output("count", op.map("len", batches, len), TestingSink(counted))
    outcome: list[str] = []
    drops: list[int] = []

    def send_then_stop() -> None:
        deadline = time.monotonic() + 30
        while not bound(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)   # the burst comes while the worker sits idle
        outcome.append(subprocess.run(
            [sys.executable, "-c", f"from tests.inlet_process import paced_send; "
             f"paced_send({port}, {rate}, {count}, catch_up=False)"], capture_output=True,
            text=True).stdout)
        time.sleep(0.5)
        drops.append(inlet_process.socket_drops(port))   # while the socket is still open
        stop.set()

    sending = threading.Thread(target=send_then_stop, daemon=True)
    sending.start()
    with favoured_thread():
        run_main(flow)
    sending.join()
    sent, elapsed = outcome[0].split()[:2]
    assert int(sent) == count
    return sum(counted), drops[0], count / float(elapsed)


def test_small_receive_buffer_takes_a_burst_without_kernel_drops() -> None:
    """A Debian-sized buffer holds ~150 of these datagrams: at 40,000/s it fills in under 4 ms,
    sooner than the fixed 5 ms pause between reads there was (which lost ~25% of every burst,
    more at higher rates). The pause is sized from the granted buffer instead. The cores are
    shared with other jobs, which now and then stall the worker for longer than that: up to
    eight quarter-second bursts, each on a new socket, and one must arrive whole with no
    kernel drop (the fixed pause never gave one)."""
    count, runs = 10_000, []
    for _ in range(8):
        received, drops, reached = run_small_buffer_burst(40_000, count)
        runs.append((received, drops, round(reached)))
        if drops == 0 and received == count:
            break
    assert runs[-1][:2] == (count, 0), runs
