"""Full pipeline: the highest rate of real exporters' flows that reach ClickHouse exactly once.

    python bench/pipeline.py [--layouts 1,2] [--rates 25000,50000,...] [--seconds 5] [--exporters 24]

Real exporters' datagrams (softflowd NetFlow v9 and IPFIX, pmacct's IPFIX and sFlow v5 over
the same generated pcap as bench/decode.py; each exporter replays its format's sequence from the
start, templates first) are sent by a separate, paced sender process from `--exporters`
loopback addresses (127.0.1.x: each one its own exporter) to the real inlet (UDP) → local tansu
broker → the real outlet with enrichment (recovery on, as `waxflow run outlet` runs it) → the
embedded chDB store with its 1m/5m/1h views. Steps climb in flows/s; each sends whole rounds of
every exporter's sequence. A step is lossless when the kernel dropped nothing, every flow sent
was stored exactly once (the store's row count and sum of bytes, read through the outlet's API,
grow by exactly what the rounds hold, computed by decoding them here) and the pipeline stored
them at ≥ 90% of the target rate (time from the step's first datagram to its last row stored).

`--layouts 1,2`: inlet and outlet with 1 worker each, then with `-w 2` each. CPU-seconds per
million flows of each component (inlet, broker, outlet with chDB inside it, sender) are read
from /proc. In the same run, pmacct's collectors (Debian's `nfacctd` for NetFlow/IPFIX and
`sfacctd` for sFlow, print plugin to CSV every second) take the same steps as the C reference:
a step counts when the kernel dropped nothing on their sockets.
Everything shares this machine's cores. pmacct's print plugin purges every second, across the
steps' boundaries, so its printed totals are shown, not checked: for it only socket drops decide.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.broker import LocalBroker  # noqa: E402
from tests import inlet_process  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.outlet_process import Outlet, write_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
LATENCY = 4.0  # s: a batch waits up to clickhouse.batch_wait (1 s here), then its insert
FORMATS = ("NetFlow v9", "IPFIX", "IPFIX (pmacct)", "sFlow v5")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS


def exporters(count: int) -> list[dict]:
    """Each exporter: its source address and format, and per datagram of its format's sequence
    what it holds (flows, bytes, packets as the decoder counts them) the first time through
    (templates still to learn) and on later rounds."""
    import numpy as np

    from bench.decode import exporter_datagrams
    from flows.decode import ExporterState, decode_many

    data = exporter_datagrams(20000)
    per_format = {}
    for label in FORMATS:
        payloads = [d[0] for d in data[label]]
        state = ExporterState("192.0.2.1")
        passes = [np.array([_totals(decode_many(state, [(p, "", 0.0)])) for p in payloads], np.int64)
                  for _ in range(2)]
        per_format[label] = passes
    return [{"address": f"127.0.1.{10 + i}", "format": FORMATS[i % len(FORMATS)],
             "first": per_format[FORMATS[i % len(FORMATS)]][0], "later": per_format[FORMATS[i % len(FORMATS)]][1],
             "at": 0} for i in range(count)]


def _totals(batch) -> tuple[int, int, int]:
    import pyarrow.compute as pc

    if not batch.num_rows:
        return 0, 0, 0
    return (batch.num_rows, int(pc.sum(batch.column("Bytes")).as_py()),
            int(pc.sum(batch.column("Packets")).as_py()))


def flows_per_datagram(sources: list[dict]) -> float:
    return sum(int(s["later"][:, 0].sum()) for s in sources) / sum(len(s["later"]) for s in sources)


def expected(sources: list[dict], count: int) -> tuple[int, int, int]:
    """What the next `count` datagrams of every exporter hold (from where each stands)."""
    total = [0, 0, 0]
    for source in sources:
        n = len(source["later"])
        for i in range(source["at"], source["at"] + count):
            row = (source["first"] if i < n else source["later"])[i % n]
            total = [t + int(v) for t, v in zip(total, row)]
    return total[0], total[1], total[2]


def next_step(sources: list[dict], rate: int, seconds: float, per_datagram: float) -> tuple[int, tuple]:
    """Datagrams per exporter for a step of `seconds` at `rate` flows/s, and what they hold."""
    count = max(1, round(rate * seconds / per_datagram / len(sources)))
    return count, expected(sources, count)


def send(sources: list[dict], ports: dict[str, int], count: int, datagrams_per_s: float) -> tuple[int, float, float]:
    """In a child process: the next `count` datagrams of every exporter, interleaved, paced."""
    spec = {"sources": [(s["address"], s["format"], s["at"]) for s in sources], "ports": ports,
            "count": count, "rate": datagrams_per_s}
    for source in sources:
        source["at"] += count
    out = subprocess.run([sys.executable, __file__, "--send", json.dumps(spec)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def _sender(spec: dict) -> None:
    from bench.decode import exporter_datagrams

    data = exporter_datagrams(20000)
    sockets, sequences, starts = [], [], []
    for address, label, at in spec["sources"]:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        tx.bind((address, 0))
        port = spec["ports"]["sflow" if label.startswith("sFlow") else "netflow"]
        tx.connect(("127.0.0.1", port))
        sockets.append(tx)
        sequences.append([d[0] for d in data[label]])
        starts.append(at)
    # one datagram of each exporter in turn, each going on with its sequence (cyclically)
    order = [(tx, seq[(at + step) % len(seq)]) for step in range(spec["count"])
             for tx, seq, at in zip(sockets, sequences, starts)]
    rate = spec["rate"]
    cpu0, start = time.process_time(), time.perf_counter()
    sent = 0
    while sent < len(order):
        due = min(len(order), int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            tx, payload = order[sent]
            tx.send(payload)
            sent += 1
        time.sleep(0.0005)
    print(sent, f"{time.perf_counter() - start:.4f}", f"{time.process_time() - cpu0:.4f}", flush=True)


def api_totals(port: int) -> tuple[int, int, int]:
    sql = "SELECT count(), sum(Bytes), sum(Packets) FROM waxflow.flows"
    url = f"http://127.0.0.1:{port}/api/v0/query?" + urllib.parse.urlencode({"sql": sql})
    with urllib.request.urlopen(url, timeout=30) as answer:
        row = json.loads(answer.read())["rows"][0]
    return int(row[0]), int(row[1] or 0), int(row[2] or 0)


def udp_drops(ports: list[int]) -> int:
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                total += int(fields[-1])
    return total


def per_million(seconds: float, flows: int) -> float:
    return seconds / max(flows, 1) * 1e6


def run_waxflow(sources: list[dict], rates: list[int], seconds: float, workers: int, work: Path) -> dict:
    work.mkdir(parents=True)
    broker = LocalBroker("127.0.0.1", free_port(), work / "broker")
    broker_pid = broker.start()
    ports = {"netflow": free_port(socket.SOCK_DGRAM), "sflow": free_port(socket.SOCK_DGRAM)}
    inlet_metrics, api_port = free_port(), free_port()
    config = inlet_process.write_config(work / "inlet.yaml", port=ports["netflow"], metrics_port=inlet_metrics,
                                        bootstrap=broker.bootstrap, topic="bench", partitions=4)
    import yaml

    settings = yaml.safe_load(config.read_text())
    settings["inlet"]["listeners"].append({"name": "sflow", "address": "127.0.0.1", "port": ports["sflow"],
                                           "decoder": "sflow"})
    settings["data_dir"] = str(work / "inlet-data")
    config.write_text(yaml.safe_dump(settings))
    inlet = inlet_process.start(config, work / "inlet.log", inlet_metrics, "-w", str(workers),
                                wait_topic="bench-v1", bootstrap=broker.bootstrap)
    (work / "outlet").mkdir()
    outlet = Outlet(write_config(work / "outlet", bootstrap=broker.bootstrap, topic="bench", api_port=api_port,
                                 batch_rows=100_000, batch_wait="1s"), api_port, workers=workers,
                    snapshot_seconds=10)
    outlet.start()
    outlet.wait_for(lambda o: o.value("waxflow_clickhouse_rows_total") >= 0 and api_totals(api_port) is not None,
                    60, "the API answering")
    per_datagram = flows_per_datagram(sources)
    best: dict = {}
    try:
        for rate in rates:
            count, want = next_step(sources, rate, seconds, per_datagram)
            before = api_totals(api_port)
            drops0 = udp_drops(list(ports.values()))
            pids = {"inlet": inlet.process.pid, "broker": broker_pid, "outlet": outlet.procs[0].pid}
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            sent, elapsed, sender_cpu = send(sources, ports, count, count * len(sources) * rate / want[0])
            deadline = started + max(4 * seconds, 30)
            now = before
            while time.perf_counter() < deadline:
                now = api_totals(api_port)
                if now[0] - before[0] >= want[0]:
                    break
                time.sleep(0.2)
            stored_after = time.perf_counter() - started
            time.sleep(1.5)  # anything more arriving would be a duplicate
            now = api_totals(api_port)
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            got = tuple(n - b for n, b in zip(now, before))
            drops = udp_drops(list(ports.values())) - drops0
            exact = got == want
            # kept up: everything stored within LATENCY of the last datagram sent
            lossless = exact and drops == 0 and stored_after <= elapsed + LATENCY
            same = "=" if got[1] == want[1] else "≠"
            line = (f"  waxflow -w {workers} target {rate:>7,} flows/s: sent {want[0]:,} flows in {sent:,} datagrams "
                    f"({want[0] / elapsed:,.0f} flows/s); stored {got[0]:,} rows (bytes {same} sent), the last "
                    f"{stored_after - elapsed:.1f}s after the last datagram; kernel drops {drops}; CPU s per "
                    f"million flows: inlet {per_million(cpu['inlet'], want[0]):.2f} broker "
                    f"{per_million(cpu['broker'], want[0]):.2f} outlet {per_million(cpu['outlet'], want[0]):.2f} "
                    f"sender {per_million(sender_cpu, want[0]):.2f}; {'lossless' if lossless else 'NOT lossless'}")
            print(line, flush=True)
            if not lossless:
                break
            best = {"rate": rate, "lag": stored_after - elapsed, **{k: per_million(v, want[0]) for k, v in cpu.items()}}
    finally:
        outlet.stop()
        inlet.stop(60)
        broker.stop()
    return best


PMACCT = """daemonize: false
{kind}_ip: 127.0.0.1
{kind}_port: {port}
plugins: print
aggregate: src_host, dst_host, proto
print_output: csv
print_output_file: {out}/{kind}-%s.csv
print_output_file_append: true
print_refresh_time: 1
print_cache_entries: 65537
{kind}_pipe_size: 67108864
plugin_pipe_size: 67108864
plugin_buffer_size: 1048576
"""


def run_pmacct(sources: list[dict], rates: list[int], seconds: float, work: Path) -> dict:
    """nfacctd (NetFlow/IPFIX) and sfacctd (sFlow) with the print plugin, the same steps."""
    work.mkdir(parents=True)
    ports = {"netflow": free_port(socket.SOCK_DGRAM), "sflow": free_port(socket.SOCK_DGRAM)}
    procs = {}
    for kind, binary, port in (("nfacctd", "/usr/sbin/nfacctd", ports["netflow"]),
                               ("sfacctd", "/usr/sbin/sfacctd", ports["sflow"])):
        conf = work / f"{kind}.conf"
        conf.write_text(PMACCT.format(kind=kind, port=port, out=work))
        procs[kind] = subprocess.Popen([binary, "-f", str(conf)], stdout=open(work / f"{kind}.log", "wb"),
                                       stderr=subprocess.STDOUT)
    time.sleep(2)
    for source in sources:
        source["at"] = 0  # pmacct starts without templates too
    per_datagram = flows_per_datagram(sources)
    best: dict = {}
    try:
        for rate in rates:
            count, want = next_step(sources, rate, seconds, per_datagram)
            before = printed_packets(work)
            drops0 = udp_drops(list(ports.values()))
            cpu0 = sum(cpu_seconds(p.pid) + _children_cpu(p.pid) for p in procs.values())
            sent, elapsed, _ = send(sources, ports, count, count * len(sources) * rate / want[0])
            time.sleep(3)  # two print intervals
            packets = printed_packets(work) - before
            cpu = sum(cpu_seconds(p.pid) + _children_cpu(p.pid) for p in procs.values()) - cpu0
            drops = udp_drops(list(ports.values())) - drops0
            # Printed totals straddle the steps (a purge every second): shown, not checked.
            lossless = drops == 0 and want[0] / elapsed >= 0.9 * rate
            print(f"  pmacct target {rate:>7,} flows/s: sent {want[0]:,} flows; kernel drops {drops}; printed packets "
                  f"{packets:,} of {want[2]:,}; CPU s per million flows {per_million(cpu, want[0]):.2f}; "
                  f"{'no drop' if lossless else 'DROPS'}", flush=True)
            if not lossless:
                break
            best = {"rate": rate, "cpu": per_million(cpu, want[0])}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
    return best


def _children_cpu(pid: int) -> float:
    """CPU of pmacct's plugin processes (children of the core process)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, ValueError, IndexError):
            continue
    return total


def printed_packets(work: Path) -> int:
    total = 0
    for path in work.glob("*.csv"):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                total += int(row.get("PACKETS") or 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", default="1,2", help="workers of the inlet and of the outlet, per run")
    parser.add_argument("--rates", default="25000,50000,100000,150000,200000,300000")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each step")
    parser.add_argument("--exporters", type=int, default=24)
    parser.add_argument("--no-pmacct", action="store_true")
    parser.add_argument("--send", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        _sender(json.loads(args.send))
        return
    rates = [int(r) for r in args.rates.split(",")]
    sources = exporters(args.exporters)
    mix = {}
    for s in sources:
        mix[s["format"]] = mix.get(s["format"], 0) + 1
    per_datagram = flows_per_datagram(sources)
    print(f"pipeline benchmark: {args.exporters} exporters ({', '.join(f'{n} {k}' for k, n in mix.items())}), "
          f"{per_datagram:.1f} flows per datagram, {args.seconds:g}s steps, {os.cpu_count()} cores shared by "
          f"everything; load average {os.getloadavg()[0]:.2f} before the run")
    results = {}
    with tempfile.TemporaryDirectory(prefix="waxflow-bench-pipeline-") as tmp:
        for layout in args.layouts.split(","):
            for source in sources:
                source["at"] = 0  # a new pipeline: templates to learn again
            results[f"waxflow -w {layout}"] = run_waxflow(sources, rates, args.seconds, int(layout),
                                                          Path(tmp) / f"w{layout}")
        if not args.no_pmacct:
            results["pmacct"] = run_pmacct(sources, rates, args.seconds, Path(tmp) / "pmacct")
    print("\nhighest lossless rate, end to end:")
    for name, best in results.items():
        if not best:
            print(f"  {name}: none of the rates tried")
        elif name == "pmacct":
            print(f"  {name} (nfacctd + sfacctd, print plugin): {best['rate']:,} flows/s; "
                  f"{best['cpu']:.2f} CPU s per million flows")
        else:
            total = best["inlet"] + best["broker"] + best["outlet"]
            print(f"  {name}: {best['rate']:,} flows/s (the last row stored {best['lag']:.1f}s after the last "
                  f"datagram); CPU s per million flows: inlet {best['inlet']:.2f}, broker {best['broker']:.2f}, "
                  f"outlet {best['outlet']:.2f} (total {total:.2f})")


if __name__ == "__main__":
    main()
