"""Detection's cost per flow at the shipped default rules, next to the outlet's own per-flow cost.

    python bench/alerts.py [--flows 1000000] [--batch 50000]

Flows are the demo's (flows/demo.py: three routers' traffic with an amplification attack mixed
in, so alerts fire and signatures are taken), as the outlet's enriched batches carry them. Each
batch goes through what the outlet runs per batch for detection: RuleBank.partials (the 8
default rules' filters, per-second per-key totals, signatures of hot keys) and each rule's
DetectLogic.on_item (merging, sliding windows, state machine). Thread CPU time per flow is
printed, with the outlet's decode + enrich cost per flow measured in this run by
bench/outlet.py's stage_costs on real exporter datagrams.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def demo_batches(flows: int, batch: int, start: int):
    from flows import demo, schema

    traffic = demo.Traffic(seed=11)
    router = demo.ROUTERS[0]
    def v4(n: int) -> bytes:
        return bytes(10) + b"\xff\xff" + n.to_bytes(4, "big")
    out, second = [], start
    while sum(b.num_rows for b in out) < flows:
        records = traffic.flows(router, batch - 200, second * 1000) + traffic.attack("amplification", router, 200,
                                                                                     second * 1000)
        out.append(schema.make_batch({
            "TimeReceived": [second] * len(records), "SamplingRate": [router.sampling] * len(records),
            "SrcAddr": [v4(f.src) for f in records], "DstAddr": [v4(f.dst) for f in records],
            "Proto": [f.proto for f in records], "SrcPort": [f.sport for f in records],
            "DstPort": [f.dport for f in records], "TCPFlags": [f.tcp_flags for f in records],
            "Bytes": [f.octets for f in records], "Packets": [f.packets for f in records]}, len(records)))
        second += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    args = parser.parse_args()

    from flows.alerts_step import DetectLogic, RuleBank
    from flows.settings.alerts import Alerts

    rules = [r.rule() for r in Alerts().all_rules()]
    batches = demo_batches(args.flows, args.batch, int(time.time()))
    bank = RuleBank(rules)
    logics = {r.name: DetectLogic({r.name: r}, None) for r in rules}
    fired, flows, cpu = set(), 0, 0.0
    for i, batch in enumerate(batches):
        started = time.thread_time()
        for name, partial in bank.partials(batch):
            fired |= {e.rule for e, _ in logics[name].on_item(partial)[0] if e.kind == "start"}
        if i:  # (the first batch warms up)
            cpu += time.thread_time() - started
            flows += batch.num_rows
    detection = cpu / flows * 1e6

    from bench.outlet import exporter_sequences, stage_costs

    outlet = stage_costs(exporter_sequences(16), rows=200_000)
    per_flow = outlet["unwrap"] + outlet["decode"] + outlet["enrich"]
    print(f"alerts benchmark: {flows:,} demo flows in {args.batch:,}-flow batches, {len(rules)} default rules "
          f"(fired: {', '.join(sorted(fired)) or 'none'})")
    print(f"{'detection CPU per flow':40} {detection:8.3f} µs")
    print(f"{'outlet unwrap + decode + enrich per flow':40} {per_flow:8.3f} µs")
    print(f"{'detection / outlet':40} {detection / per_flow:8.2f}×")


if __name__ == "__main__":
    main()
