"""Inlet throughput: the highest lossless rate of 1400-byte datagrams, for 1 and 2 workers.

    python bench/inlet.py [--layouts 1x1,1x2,2x1] [--rates 50000,100000,...] [--seconds 1.0]
                          [--producer compression.type=none ...] [--receive-buffer 212992]

A separate sender process sends a bounded number of datagrams (rate × seconds) from one socket
at a fixed rate to a real inlet (`python -m bytewax.run flows.inlet`, one or more processes)
producing to the local tansu broker. A step is lossless when every datagram sent was received,
produced and acknowledged by Kafka and the kernel dropped none (the sockets' drop counters in
/proc/net/udp). The rates climb until the first lossy step, or the first the sender could not
reach. Everything shares this machine's cores; each step prints the CPU time per datagram of
the inlet (all its processes and threads, librdkafka's included), of the broker and of the
sender, so the reader sees the split. The headline is end to end: lossless into the broker.

The sender uses UDP segmentation offload (see `tests.inlet_process.paced_send`): the cheapest way to put datagrams on
loopback, so that it takes as little as possible of the cores the inlet needs. Payloads are
random (64 distinct 46-datagram buffers, cycled), so lz4 finds nothing to compress: the worst
case for the bytes sent to the broker, and lz4's effort is wasted (`--producer
compression.type=none` shows what it costs).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.broker import LocalBroker  # noqa: E402
from tests import inlet_process  # noqa: E402
from tests.conftest import free_port  # noqa: E402

SIZE = inlet_process.SIZE
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads


def totals(exposition: str) -> dict[str, float]:
    out = {"datagrams": 0.0, "acked": 0.0, "drops": 0.0, "failed": 0.0, "discarded": 0.0}
    names = {"waxflow_inlet_datagrams_total": "datagrams", "waxflow_inlet_kafka_acked_total": "acked",
             "waxflow_inlet_kernel_drops_total": "drops", "waxflow_inlet_kafka_failed_total": "failed",
             "waxflow_inlet_kafka_discarded_total": "discarded"}
    for line in exposition.splitlines():
        name = line.split("{", 1)[0]
        if name in names:
            out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


def settle(inlets: list[inlet_process.Inlet], expect_acked: float,
           timeout: float = 30.0) -> dict:
    """Wait until Kafka acknowledged `expect_acked` or the counts stop moving."""
    deadline, last, still = time.monotonic() + timeout, None, 0
    now = {}
    while time.monotonic() < deadline:
        now = cluster_totals(inlets)
        if now["acked"] >= expect_acked:
            return now
        still = still + 1 if now == last else 0
        if still >= 6:  # 3 s without change: what is missing will not come
            return now
        last = now
        time.sleep(0.5)
    return now


def cluster_totals(inlets: list[inlet_process.Inlet]) -> dict:
    sums: dict = {}
    for inlet in inlets:
        for key, value in totals(inlet.metrics()).items():
            sums[key] = sums.get(key, 0.0) + value
    return sums


def run_layout(processes: int, workers: int, rates: list[int], seconds: float, work: Path,
               producer: dict[str, str], receive_buffer: int | None = None) -> dict:
    """One inlet cluster of `processes` × `workers` against a fresh broker, climbing rates."""
    name = f"{processes}x{workers}"
    broker = LocalBroker("127.0.0.1", free_port(), work / f"broker-{name}")
    broker_pid = broker.start()
    port, metrics_port = free_port(socket.SOCK_DGRAM), inlet_process.consecutive_ports(processes)
    logs = work / name
    logs.mkdir()
    config = inlet_process.write_config(work / f"inlet-{name}.yaml", port=port,
                                        metrics_port=metrics_port, bootstrap=broker.bootstrap,
                                        topic=f"bench{name}", partitions=4, producer=producer,
                                        receive_buffer=receive_buffer)
    inlets = inlet_process.start_cluster(config, logs, metrics_port, processes, workers,
                                         f"bench{name}-v1", broker.bootstrap)
    mode = next((line.split("balancing ", 1)[1].split(" ")[0] for line in inlets[0].text().splitlines()
                 if "balancing " in line), "?")
    best: dict = {}
    try:
        before, drops_before = cluster_totals(inlets), inlet_process.socket_drops(port)
        for rate in rates:
            count = int(rate * seconds)
            cpu0 = sum(cpu_seconds(i.process.pid) for i in inlets)
            broker0 = cpu_seconds(broker_pid)
            # A small buffer would overflow on the sender's catch-up bursts whatever the inlet
            # does: with --receive-buffer the sender slows down instead.
            out = subprocess.run([sys.executable, __file__, "--send", str(port), str(rate),
                                  str(count), "0" if receive_buffer else "1"],
                                 capture_output=True, text=True, check=True).stdout
            sent, elapsed, sender_cpu = int(out.split()[0]), float(out.split()[1]), float(out.split()[2])
            after = settle(inlets, before["acked"] + sent)
            cpu = sum(cpu_seconds(i.process.pid) for i in inlets) - cpu0
            broker_cpu = cpu_seconds(broker_pid) - broker0
            drops = inlet_process.socket_drops(port)
            delta = {k: after[k] - before[k] for k in after}
            delta["drops"] = drops - drops_before
            before, drops_before = after, drops
            lossless = (delta["datagrams"] == sent and delta["acked"] == sent
                        and delta["drops"] == 0 and delta["failed"] == 0)
            achieved = sent / elapsed
            # The sender shares the cores: a step only counts at the rate it really reached.
            sender_limited = achieved < 0.95 * rate
            per = 1e6 / max(sent, 1)
            print(f"  {processes} process(es) x {workers} worker(s) rate={rate:>7}/s: sent "
                  f"{sent} in {elapsed:.2f}s ({achieved:,.0f}/s) received={delta['datagrams']:.0f} "
                  f"acked={delta['acked']:.0f} kernel_drops={delta['drops']:.0f}; CPU us/datagram: "
                  f"inlet {cpu * per:.1f} broker {broker_cpu * per:.1f} sender "
                  f"{sender_cpu * per:.1f}; {'lossless' if lossless else 'LOSSY'}"
                  f"{' (sender below the target rate)' if sender_limited else ''}", flush=True)
            if not lossless:
                break
            if achieved > best.get("achieved", 0):
                best = {"rate": rate, "achieved": achieved, "cpu_us": cpu * per,
                        "broker_us": broker_cpu * per, "sender_us": sender_cpu * per}
            if sender_limited:
                break  # higher targets would only measure the sender
    finally:
        for inlet in inlets:
            inlet.terminate()
        for inlet in inlets:
            inlet.stop()
        broker.stop()
    return {"layout": f"{processes} process(es) x {workers} worker(s)", "mode": mode, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", default="1x1,1x2,2x1",
                        help="inlet clusters to measure, PROCESSESxWORKERS: 1x2 is two worker "
                             "threads in one process (they share its interpreter lock), 2x1 two "
                             "processes of one worker (-i/-a)")
    parser.add_argument("--rates", default="50000,100000,125000,150000,165000,180000,190000,"
                                           "200000,225000,250000")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="length of each rate step (the datagram count is rate × seconds)")
    parser.add_argument("--producer", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka producer setting for the inlet (repeatable), e.g. "
                             "compression.type=none")
    parser.add_argument("--receive-buffer", type=int, metavar="BYTES",
                        help="the listener's receive_buffer, e.g. 212992: what an unprivileged "
                             "inlet gets on a stock Debian (default: the configured 32 MiB)")
    parser.add_argument("--send", nargs=4, type=int, metavar=("PORT", "RATE", "COUNT", "CATCH_UP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        port, rate, count, catch_up = args.send
        inlet_process.paced_send(port, rate, count, bool(catch_up))
        return
    rates = [int(r) for r in args.rates.split(",")]
    print(f"inlet benchmark: {SIZE}-byte random datagrams, {args.seconds}s per step, "
          f"{os.cpu_count()} cores shared by sender, inlet and broker; load average "
          f"{os.getloadavg()[0]:.2f} before the run; receive buffer "
          f"{args.receive_buffer or 'as configured (32 MiB)'}")
    with tempfile.TemporaryDirectory() as tmp:
        producer = dict(item.split("=", 1) for item in args.producer)
        results = [run_layout(*map(int, layout.split("x")), rates, args.seconds, Path(tmp),
                              producer, args.receive_buffer)
                   for layout in args.layouts.split(",")]
    print("\nhighest lossless rate (CPU us per datagram: inlet / broker / sender):")
    for r in results:
        if "rate" in r:
            print(f"  {r['layout']}, balancing {r['mode']}: {r['achieved']:,.0f}/s (target "
                  f"{r['rate']:,}/s); {r['cpu_us']:.1f} / {r['broker_us']:.1f} / "
                  f"{r['sender_us']:.1f}")
        else:
            print(f"  {r['layout']}, balancing {r['mode']}: none of the rates tried")


if __name__ == "__main__":
    main()
