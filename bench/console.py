"""The console's API calls on a day of demo traffic: p50 and p95 latency per endpoint.

    python bench/console.py [--rate 1000] [--rounds 20]

A fresh chDB store is filled with 24 hours of flows at `--rate` flows/s (the 1m/5m/1h tables
filled by their materialized views as the outlet's inserts fill them), built in the store itself
from the demo's routers, interfaces, peers (AS, country) and services, with its day/night
shape: INSERT ... SELECT over numbers(), one insert per hour of traffic. Then the outlet's HTTP
API serves it and each call the console makes is timed over HTTP, `--rounds` times, for a 24 h
range: the home widgets, top-N over the 10 dimensions the aggregated tables keep (and DstPort,
which only raw flows keep), a 3-dimension sankey, bidirectional with the previous day, a
filtered graph, the interface-speed and flows/s units, filter validation and completion.

    --keep DIR  build the store in DIR and keep it (a second run with --reuse skips the fill)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _array(values) -> str:
    return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values) + "]"


def fill(client, database: str, rate: int, now: int) -> int:
    """24 h of flows at `rate` flows/s (shaped by demo.diurnal's day/night) into `database`."""
    from flows import demo

    routers = demo.ROUTERS
    peers = demo.PEERS
    names = _array([r.name for r in routers])
    addresses = _array([r.address for r in routers])
    asns = _array([p.asn for p in peers])
    weights = [max(1, int(p.weight * 100)) for p in peers]
    countries = _array([p.country for p in peers])
    edges = {r.name: [i for i in demo.interfaces(r) if i.kind != "customers"] for r in routers}
    if_names = _array([i.name for i in edges[routers[0].name]])
    if_descriptions = _array([i.description for i in edges[routers[0].name]])
    # a peer index drawn with the peers' weights
    cumulative, total = [], 0
    for w in weights:
        total += w
        cumulative.append(total)
    peer = f"arrayFirstIndex(x -> x > (cityHash64(number, 1) % {total}), {_array(cumulative)})"
    rows = 0
    for hour in range(24):
        start = now - 86400 + hour * 3600
        count = max(1, int(rate * 3600 * demo.diurnal(start)))
        step = 3600 / count
        client.command(f"""
            INSERT INTO `{database}`.flows (TimeReceived, SamplingRate, ExporterAddress, ExporterName, SrcAddr, DstAddr,
                SrcAS, DstAS, SrcCountry, DstCountry, InIfIndex, OutIfIndex, InIfName, OutIfName, InIfDescription,
                InIfBoundary, OutIfBoundary, InIfSpeed, OutIfSpeed, EType, Proto, SrcPort, DstPort, Bytes, Packets)
            SELECT toDateTime({start} + intDiv(number * {int(step * 1000)}, 1000)), 1000,
                toIPv6(concat('::ffff:', {addresses}[1 + number % {len(routers)}])),
                {names}[1 + number % {len(routers)}],
                toIPv6(IPv4NumToString(toUInt32(167772160 + cityHash64(number, 2) % 16777216))),
                toIPv6(IPv4NumToString(toUInt32(3221225472 + cityHash64(number, 3) % 65536))),
                {asns}[{peer}], {demo.LOCAL_AS}, {countries}[{peer}], 'FR',
                1 + cityHash64(number, 4) % 6, 100,
                {if_names}[1 + cityHash64(number, 4) % {len(edges[routers[0].name])}],
                'ae0', {if_descriptions}[1 + cityHash64(number, 4) % {len(edges[routers[0].name])}],
                'external', 'internal', 100000, 100000, 2048, if(number % 10 < 8, 6, 17),
                toUInt16(32768 + cityHash64(number, 5) % 28000), if(number % 10 < 8, 443, 53),
                toUInt64(100 + cityHash64(number, 6) % 15000), toUInt64(1 + cityHash64(number, 6) % 12)
            FROM numbers({count})""")
        rows += count
    return rows


AGGREGATED_DIMENSIONS = ("ExporterName", "SrcAS", "DstAS", "SrcCountry", "DstCountry", "InIfName", "OutIfName",
                         "InIfDescription", "InIfBoundary", "Proto")
# The calls the console makes, as it makes them (console/src/home.ts, visualize.ts).
CALLS = [
    ("home: flow-rate", "/api/v0/widgets/flow-rate", {}),
    ("home: graph (the last hour)", "/api/v0/widgets/graph", {}),
    *[(f"home: top {d}", f"/api/v0/widgets/top/{d}", {"limit": 5}) for d in
      ("ExporterName", "SrcAS", "SrcCountry", "Proto", "DstPort")],
    ("home: last-flow", "/api/v0/widgets/last-flow", {}),
    ("home: exporters", "/api/v0/exporters", {}),
    *[(f"top-N 24 h: {d}", "/api/v0/graph", {"from": "-24h", "dimensions": d, "limit": 10, "points": 120})
      for d in AGGREGATED_DIMENSIONS],
    ("top-N 24 h: DstPort (raw flows only)", "/api/v0/graph",
     {"from": "-24h", "dimensions": "DstPort", "limit": 10, "points": 120}),
    ("sankey 24 h: SrcAS, InIfName, ExporterName", "/api/v0/graph",
     {"from": "-24h", "dimensions": "SrcAS,InIfName,ExporterName", "limit": 20, "type": "sankey"}),
    ("graph 24 h: SrcAS, bidirectional + previous day", "/api/v0/graph",
     {"from": "-24h", "dimensions": "SrcAS", "limit": 10, "points": 120, "bidirectional": 1, "previous": "day"}),
    ("graph 24 h, filtered", "/api/v0/graph", {"from": "-24h", "dimensions": "ExporterName", "points": 120,
                                                "filter": "InIfBoundary = 'external' AND Proto = 6"}),
    ("graph 24 h: % of input speed by InIfName", "/api/v0/graph",
     {"from": "-24h", "dimensions": "InIfName", "points": 120, "unit": "inl2pct"}),
    ("graph 1 h: flows/s by ExporterName (raw)", "/api/v0/graph",
     {"from": "-1h", "dimensions": "ExporterName", "points": 120, "unit": "flows"}),
    ("filter/validate", "/api/v0/filter/validate", {"filter": "SrcAS = 2906 AND ExporterName = 'edge1.par'"}),
    ("filter/complete: a value", "/api/v0/filter/complete", {"filter": "ExporterName = 'edge"}),
    ("filter/complete: an AS", "/api/v0/filter/complete", {"filter": "SrcAS = 29"}),
    ("saved filters", "/api/v0/filters", {}),
]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as answer:
        answer.read()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="flows/s at the daily peak")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="build the store in this directory and keep it")
    parser.add_argument("--reuse", action="store_true", help="the --keep directory is built already")
    args = parser.parse_args()

    from connectors import clickhouse, http
    from flows.settings import API, Settings

    with tempfile.TemporaryDirectory() as scratch:
        store = str(args.keep or scratch)
        settings = Settings(clickhouse={"dsn": f"chdb:{store}", "database": "bench"},
                            kafka={"brokers": [f"127.0.0.1:{free_port()}"]},
                            api=API(listen=f"127.0.0.1:{free_port()}"))
        clickhouse.migrate(settings.clickhouse)
        client = clickhouse.connect(settings.clickhouse)
        started = time.monotonic()
        if args.reuse:
            rows = client.query("SELECT count() FROM bench.flows").result_rows[0][0]
        else:
            rows = fill(client, "bench", args.rate, int(time.time()))
        print(f"console benchmark: {rows:,} flows over 24 h ({args.rate:,} flows/s at the peak) built in "
              f"{time.monotonic() - started:.0f} s; {args.rounds} rounds per call, HTTP on this machine")
        assert http.serve_outlet(settings)
        base = http.api_base(settings)
        print(f"{'call':50} {'p50 ms':>8} {'p95 ms':>8}")
        for name, path, params in CALLS:
            url = f"{base}{path}?{urllib.parse.urlencode(params)}"
            try:
                timed(url)  # (first call: caches)
            except urllib.error.HTTPError as err:  # a refused call is a figure too (e.g. the query timeout)
                reason = json.loads(err.read() or b"{}").get("error", "")[:60]
                print(f"{name:50} {'HTTP ' + str(err.code):>17}  {reason}")
                continue
            times = sorted(timed(url) for _ in range(args.rounds))
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(f"{name:50} {statistics.median(times):8.1f} {p95:8.1f}")


if __name__ == "__main__":
    main()
