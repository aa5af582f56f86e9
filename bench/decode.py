"""Decoder benchmark: flows/s on one core for NetFlow v5, v9, IPFIX and sFlow v5, measured on
datagrams produced by real exporters (softflowd for NetFlow/IPFIX, pmacct's sfprobe for sFlow)
over a generated pcap, next to the PyPI `netflow` package on the same datagrams.

    .venv/bin/python bench/decode.py [--flows 20000] [--seconds 2] [--chunk 256]

Datagrams are cached under $TMPDIR/waxflow-bench-decode-<flows>/ so reruns skip the exporters.
waxflow is measured through FlowDecoder.decode_many on chunks of --chunk datagrams with
templates already learnt (a collector's steady state); `netflow` through parse_packet per
datagram with the template cache it keeps itself (learnt the same way, from the same
datagrams), which decodes every field of every record into a dict. Each figure counts the
flows that decoder itself returned (netflow also returns IPFIX options records as flows: 50
of ~20,000 here). sFlow figures count samples (one flow per sample) with the raw packet
header parsed.

Rates are CPU time of this process (pinned to one core), best of the rounds run within
--seconds: on a shared machine wall time measures the neighbours, CPU time much less so.
The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.decode import FlowDecoder  # noqa: E402
from tests import flowgen  # noqa: E402

EXPORTS = {  # label → how to produce its datagrams
    "NetFlow v5": ("softflowd", 5),
    "NetFlow v9": ("softflowd", 9),
    "IPFIX": ("softflowd", 10),
    "NetFlow v9 (pmacct)": ("nfprobe", 9),
    "IPFIX (pmacct)": ("nfprobe", 10),
    "sFlow v5": ("sfprobe", 5),
}


def exporter_datagrams(flows: int) -> dict[str, list]:
    """Datagrams per export format, produced once by the real exporters and cached."""
    cache = Path(tempfile.gettempdir()) / f"waxflow-bench-decode-{flows}"
    cache.mkdir(exist_ok=True)
    pcap = cache / "traffic.pcap"
    if not pcap.exists():
        flowgen.make_pcap(pcap, flows=flows, packets_per_flow=(1, 3), spacing=0.0001, filler=64)
    out = {}
    for label, (tool, version) in EXPORTS.items():
        path = cache / f"{tool}-{version}.pickle"
        if not path.exists():
            if tool == "softflowd":
                datagrams = flowgen.run_softflowd(pcap, version, timeout=300)
            else:
                datagrams = flowgen.run_pmacct(pcap, tool, version, timeout=300)
            path.write_bytes(pickle.dumps(datagrams))
        out[label] = pickle.loads(path.read_bytes())
    return out


def measure(function, seconds: float) -> tuple[float, int]:
    """Calls per CPU second of `function` in its fastest round (after a warm-up call, rounds for
    about `seconds` of CPU time, at least three) and its result."""
    result = function()
    best, spent, rounds = float("inf"), 0.0, 0
    while spent < seconds or rounds < 3:
        start = time.process_time()
        result = function()
        elapsed = time.process_time() - start
        best, spent, rounds = min(best, elapsed), spent + elapsed, rounds + 1
    return 1 / best, result


def waxflow_rate(datagrams: list, chunk: int, seconds: float) -> tuple[float, int]:
    decoder = FlowDecoder()
    decoder.decode_many(datagrams)  # learn templates and sampling options
    chunks = [datagrams[i:i + chunk] for i in range(0, len(datagrams), chunk)]

    def run() -> int:
        return sum(decoder.decode_many(c).num_rows for c in chunks)

    calls, flows = measure(run, seconds)
    return calls * flows, flows


def netflow_rate(datagrams: list, seconds: float) -> tuple[float, int] | None:
    try:
        import netflow
    except ImportError:
        return None
    templates = {"netflow": {}, "ipfix": {}}
    payloads = [d[0] for d in datagrams]
    for payload in payloads:  # learn templates
        try:
            netflow.parse_packet(payload, templates)
        except Exception:
            pass

    def run() -> int:
        count = 0
        for payload in payloads:
            try:
                count += len(netflow.parse_packet(payload, templates).flows)
            except Exception:
                pass
        return count

    calls, flows = measure(run, seconds)
    return calls * flows, flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=20000, help="5-tuples in the generated pcap")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--chunk", type=int, default=256, help="datagrams per decode_many call")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    data = exporter_datagrams(args.flows)
    header = f"{'format':<22}{'datagrams':>10}{'flows':>9}{'waxflow flows/s':>17}{'netflow flows/s':>17}{'ratio':>8}"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"decode benchmark: one core, decode_many chunks of {args.chunk} datagrams, "
          f"CPU time, best round; load average {load}")
    print(header)
    print("-" * len(header))
    for label, datagrams in data.items():
        ours, flows = waxflow_rate(datagrams, args.chunk, args.seconds)
        peer = None if label.startswith("sFlow") else netflow_rate(datagrams, args.seconds)
        peer_text = f"{peer[0]:>17,.0f}" if peer else f"{'n/a':>17}"
        ratio = f"{ours / peer[0]:>7.1f}x" if peer and peer[0] else f"{'':>8}"
        print(f"{label:<22}{len(datagrams):>10}{flows:>9}{ours:>17,.0f}{peer_text}{ratio}")
        if peer and peer[1] != flows:
            print(f"  note: netflow decoded {peer[1]} flows, waxflow {flows}")


if __name__ == "__main__":
    main()
