"""Demo exporter benchmark: flows/s on one core for generating the demo's traffic and encoding
it as NetFlow v9, IPFIX and sFlow v5 (flows/demo.py, struct-based), next to scapy building the
same NetFlow v9 export packets in the same run — why the demo does not use scapy.

    .venv/bin/python bench/demo.py [--flows 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows import demo  # noqa: E402


def rate(count: int, work) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def scapy_v9(flows: list[demo.Flow], router: demo.Router, now_ms: int) -> list[bytes]:
    from scapy.layers.netflow import (
        NetflowDataflowsetV9,
        NetflowFlowsetV9,
        NetflowHeader,
        NetflowHeaderV9,
        NetflowRecordV9,
        NetflowTemplateFieldV9,
        NetflowTemplateV9,
    )

    fields = [NetflowTemplateFieldV9(fieldType=t, fieldLength=n) for t, n in demo._V9_FIELDS]
    template = NetflowFlowsetV9(templates=[NetflowTemplateV9(template_fields=fields, templateID=256,
                                                             fieldCount=len(fields))])
    out = []
    for chunk in demo.chunks(flows, demo.FLOWS_PER_DATAGRAM):
        records = [NetflowRecordV9(fieldValue=demo._V9_RECORD.pack(
            f.octets, f.packets, f.proto, f.tos, f.tcp_flags, f.sport, f.src, f.src_mask, f.in_if, f.dport,
            f.dst, f.dst_mask, f.out_if, f.src_as, f.dst_as, 0, 0, router.sampling)) for f in chunk]
        packet = (NetflowHeader() / NetflowHeaderV9(unixSecs=now_ms // 1000, count=1 + len(chunk)) / template
                  / NetflowDataflowsetV9(templateID=256, records=records))
        out.append(bytes(packet))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=20_000)
    args = parser.parse_args()
    now_ms = int(time.time() * 1000)
    traffic = demo.Traffic(seed=1)
    router = {r.protocol: r for r in demo.ROUTERS}
    flows: list[demo.Flow] = []
    print(f"{'step':<34} {'flows/s':>12}")
    print(f"{'generate (Traffic.flows)':<34} "
          f"{rate(args.flows, lambda: flows.extend(traffic.flows(router['netflow9'], args.flows, now_ms))):>12,.0f}")
    encoders = {
        "NetFlow v9 (struct)": lambda: [demo.netflow_v9(c, boot_ms=now_ms, now_ms=now_ms, sequence=0, source_id=0,
                                                        sampling=1000)
                                        for c in demo.chunks(flows, demo.FLOWS_PER_DATAGRAM)],
        "IPFIX (struct)": lambda: [demo.ipfix(c, now_ms=now_ms, sequence=0, domain=0, sampling=1000)
                                   for c in demo.chunks(flows, demo.FLOWS_PER_DATAGRAM)],
        "sFlow v5 (struct)": lambda: [demo.sflow(c, agent="127.0.1.3", uptime_ms=0, sequence=0, sample_sequence=0,
                                                 sampling=2048)
                                      for c in demo.chunks(flows, demo.SAMPLES_PER_DATAGRAM)],
    }
    results = {name: rate(len(flows), work) for name, work in encoders.items()}
    small = flows[: max(demo.FLOWS_PER_DATAGRAM, args.flows // 10)]
    results["NetFlow v9 (scapy)"] = rate(len(small), lambda: scapy_v9(small, router["netflow9"], now_ms))
    for name, value in results.items():
        print(f"{'encode ' + name:<34} {value:>12,.0f}")
    print(f"struct / scapy on NetFlow v9: {results['NetFlow v9 (struct)'] / results['NetFlow v9 (scapy)']:.1f}x")


if __name__ == "__main__":
    main()
