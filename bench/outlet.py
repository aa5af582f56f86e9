"""Outlet throughput: flows/s from Kafka into chDB for one worker, `-w 2` and two processes,
with and without the enrichment step; CPU per flow of each stage and chDB's insert rate alone.

    python bench/outlet.py [--flows 3000000] [--runs 1x1,1x2,2x1] [--exporters 64]

A topic on the local tansu broker is pre-filled with envelopes of real exporter datagrams
(softflowd NetFlow v9, IPFIX and v5 over a generated pcap, ~26 flows per datagram; see
bench/decode.py, whose cached datagrams are reused) from `--exporters` exporters, each replaying
its format's datagram sequence from the start (templates first). Then the real outlet
(`python -m bytewax.run flows.outlet -r ... -s 30 -b 0`, what `waxflow run outlet` starts) reads
it into a fresh chDB store; the rate is taken from the outlet's own counters
(waxflow_clickhouse_rows_total sampled every 0.25 s) between 10% and 90% of the rows, so start-up
and the last partial batch are left out. "without enrichment" runs the same dataflow with the
enrichment step removed (flows.outlet:main_flow(enrich=False)). CPU µs/flow is the outlet
processes' CPU time (all threads, chDB's included) per row inserted after the first insert.

The per-stage figures run the outlet's steps in this process on the same datagrams; the insert
figure is ClickHouseSink's partition writing 50,000-row batches of those decoded and enriched
flows into a fresh chDB store (with its materialized views), one insert at a time.
Everything shares this machine's cores with the broker.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIX = (("NetFlow v9", 45), ("IPFIX", 45), ("NetFlow v5", 10))  # share of exporters per format


def exporter_sequences(exporters: int) -> list[tuple[str, list[bytes], int]]:
    """(exporter address, its datagram sequence, flows in it) for each exporter."""
    from bench.decode import exporter_datagrams
    from flows.decode import FlowDecoder

    data = exporter_datagrams(20000)
    formats = [label for label, share in MIX for _ in range(share)]
    out = []
    for i in range(exporters):
        label = formats[(i * len(formats)) // exporters]
        payloads = [d[0] for d in data[label]]
        flows = FlowDecoder().decode_many([(p, "192.0.2.1", 0.0) for p in payloads]).num_rows
        out.append((f"10.{i // 250}.{i % 250}.1", payloads, flows))
    return out


def fill_topic(bootstrap: str, topic: str, partitions: int, sequences, flows_wanted: int) -> tuple[int, int]:
    """Produce each exporter's sequence round-robin until `flows_wanted`; (messages, flows)."""
    from confluent_kafka import Producer

    from flows import envelope
    from tests.outlet_process import create_topic

    create_topic(bootstrap, topic, partitions)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 500_000, "compression.type": "lz4"})
    messages = flows = 0
    rounds = 0
    while flows < flows_wanted:
        for exporter, payloads, count in sequences:
            key = envelope.address_bytes(exporter)
            now = time.time_ns()
            for payload in payloads:
                while True:
                    try:
                        value = envelope.encode("netflow", 0, now, exporter, 2055, payload)
                        producer.produce(topic, key=key, value=value)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            messages += len(payloads)
            flows += count
            if flows >= flows_wanted:
                break
        rounds += 1
    assert producer.flush(120) == 0
    return messages, flows


def sustained_rate(samples: list[tuple[float, float]], total: int) -> float:
    """Rows/s between the samples at 10% and 90% of `total` rows."""
    low = next(s for s in samples if s[1] >= 0.1 * total)
    high = next(s for s in samples if s[1] >= 0.9 * total)
    return (high[1] - low[1]) / (high[0] - low[0])


def run_outlet(bootstrap: str, topic: str, workers: int, processes: int, enrich: bool, flows: int) -> dict:
    from tests.conftest import free_port
    from tests.outlet_process import Outlet, write_config

    workdir = Path(tempfile.mkdtemp(prefix="waxflow-bench-outlet-"))
    api_port = free_port()
    config = write_config(workdir, bootstrap=bootstrap, topic=topic, api_port=api_port,
                          consumer_group=f"bench-{random.randrange(1 << 30)}", batch_wait="5s")
    outlet = Outlet(config, api_port, workers=workers, processes=processes, snapshot_seconds=30,
                    cluster_ports=[free_port() for _ in range(processes)],
                    dataflow=None if enrich else "flows.outlet:main_flow(enrich=False)")
    outlet.start()
    started = time.monotonic()
    samples: list[tuple[float, float]] = []
    cpu_start = None
    try:
        while True:
            outlet.assert_running()
            rows = outlet.value("waxflow_clickhouse_rows_total")
            now = time.monotonic()
            if rows and cpu_start is None:
                cpu_start = (rows, sum(_cpu_seconds(p.pid) for p in outlet.procs))
            samples.append((now, rows))
            if rows >= flows:
                break
            if now - started > 600:
                raise RuntimeError(f"outlet did not finish in 600 s:\n{outlet.text()}")
            time.sleep(0.25)
        cpu_end = (rows, sum(_cpu_seconds(p.pid) for p in outlet.procs))
        outlet.kill()
    finally:
        outlet.stop()
    rate = sustained_rate(samples, flows)
    first = next(t for t, r in samples if r > 0)
    # CPU per flow after the first insert (start-up excluded), chDB's threads included
    cpu = (cpu_end[1] - cpu_start[1]) / (cpu_end[0] - cpu_start[0]) * 1e6 if cpu_end[0] > cpu_start[0] else 0.0
    return {"rate": rate, "rows": rows, "first_row_after": first - started,
            "all_rows_after": samples[-1][0] - started, "cpu_us": cpu}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_costs(sequences, rows: int, batch_rows: int = 50_000) -> dict[str, float]:
    """CPU µs per flow of each outlet stage, run in this process on the same datagrams: unwrap
    (envelopes → per-exporter groups), decode, enrich (thread CPU time), and the chDB insert of
    50,000-row batches through the sink partition (process CPU time: chDB's threads included),
    plus the insert's wall-clock rows/s on its own."""
    from datetime import timedelta
    from types import SimpleNamespace

    import pyarrow as pa

    from connectors.clickhouse_sink import ClickHouseSink
    from flows import envelope
    from flows.enrich import Enricher
    from flows.outlet_steps import DecodeLogic, unwrap_messages
    from flows.settings import ClickHouse, Enrichment

    messages = [SimpleNamespace(value=envelope.encode("netflow", 0, time.time_ns(), exporter, 2055, p),
                                partition=0, offset=i)
                for i, (exporter, p) in enumerate((e, p) for e, payloads, _ in sequences for p in payloads)]
    random.Random(1).shuffle(messages)  # polls mix exporters
    enricher, logics = Enricher(Enrichment()), {}
    costs = dict.fromkeys(("unwrap", "decode", "enrich"), 0.0)
    batches: list[pa.RecordBatch] = []
    for measured in (False, True):  # the first pass learns the templates
        batches, flows = [], 0
        for i in range(0, len(messages), 5000):
            started = time.thread_time()
            groups = unwrap_messages(messages[i:i + 5000])
            costs["unwrap"] += (time.thread_time() - started) * measured
            for exporter, datagrams in groups:
                logic = logics.setdefault(exporter, DecodeLogic(timedelta(seconds=2), None))
                started = time.thread_time()
                decoded, _ = logic.on_batch([datagrams])
                costs["decode"] += (time.thread_time() - started) * measured
                for batch in decoded:
                    started = time.thread_time()
                    batches.append(enricher(batch))
                    costs["enrich"] += (time.thread_time() - started) * measured
                    flows += batch.num_rows
    out = {stage: seconds / flows * 1e6 for stage, seconds in costs.items()}
    # Without their origins: the same rows are inserted over and over, which the sink would
    # otherwise drop as already stored.
    from flows.delivery import without_origins

    table = pa.Table.from_batches([without_origins(b) for b in batches]).combine_chunks()
    chunks = [table.slice(i, batch_rows).to_batches(max_chunksize=batch_rows)[0]
              for i in range(0, table.num_rows - batch_rows + 1, batch_rows)]
    where = Path(tempfile.mkdtemp(prefix='waxflow-bench-insert-'))
    cfg = ClickHouse(dsn=f"chdb:{where / 'store'}", batch_rows=batch_rows)
    from connectors.clickhouse import migrate

    migrate(cfg)  # as the outlet does when it starts
    part = ClickHouseSink(cfg, where / "delivery").build_part("clickhouse", "chdb", None)
    part.write_batch([("bench", chunks[0])])  # warm up
    part.wait_inserted()
    done, cpu, wall = 0, time.process_time(), time.perf_counter()
    while done < rows:
        for chunk in chunks:
            part.write_batch([("bench", chunk)])
            part.wait_inserted()  # the insert alone, nothing to overlap with
            done += chunk.num_rows
    out["insert"] = (time.process_time() - cpu) / done * 1e6
    out["insert_rows_per_s"] = done / (time.perf_counter() - wall)
    part.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=3_000_000, help="flows in the topic")
    parser.add_argument("--runs", default="1x1,1x2,2x1",
                        help="outlet shapes to measure, PROCESSESxWORKERS (1x2: one process, -w 2)")
    parser.add_argument("--exporters", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--insert-rows", type=int, default=1_000_000, help="rows for the insert-only figure")
    parser.add_argument("--skip-stages", action="store_true", help="skip the per-stage figures")
    args = parser.parse_args()

    from connectors.broker import LocalBroker
    from tests.conftest import free_port

    sequences = exporter_sequences(args.exporters)
    per_datagram = sum(f for _, _, f in sequences) / sum(len(p) for _, p, _ in sequences)
    print(f"outlet benchmark: {args.exporters} exporters (v9/IPFIX/v5 {'/'.join(str(s) for _, s in MIX)}%), "
          f"{per_datagram:.1f} flows per datagram, {args.partitions} partitions, load {os.getloadavg()[0]:.2f}")
    if not args.skip_stages:
        costs = stage_costs(sequences, args.insert_rows)
        print("CPU µs per flow, in this process: " + ", ".join(
            f"{stage} {costs[stage]:.2f}" for stage in ("unwrap", "decode", "enrich", "insert")))
        print(f"chDB insert alone (sink partition, 50,000-row batches): {costs['insert_rows_per_s']:,.0f} rows/s")
    broker = LocalBroker("127.0.0.1", free_port(), Path(tempfile.mkdtemp(prefix="waxflow-bench-broker-")))
    broker.start()
    try:
        topic = f"bench-{random.randrange(1 << 30):x}"
        from flows import envelope
        started = time.perf_counter()
        messages, flows = fill_topic(broker.bootstrap, envelope.topic_name(topic), args.partitions,
                                     sequences, args.flows)
        print(f"topic filled: {messages:,} messages, {flows:,} flows in {time.perf_counter() - started:.1f} s")
        header = (f"{'processes':>9} {'workers':>7}  {'enrichment':<10}{'flows/s (10-90%)':>18}{'first row':>11}"
                  f"{'all rows':>10}{'CPU µs/flow':>13}  load")
        print(header)
        print("-" * len(header))
        for shape in args.runs.split(","):
            processes, workers = (int(n) for n in shape.split("x"))
            for enrich in (True, False):
                result = run_outlet(broker.bootstrap, topic, workers, processes, enrich, flows)
                print(f"{processes:>9} {workers:>7}  {'yes' if enrich else 'no':<10}{result['rate']:>18,.0f}"
                      f"{result['first_row_after']:>10.1f}s{result['all_rows_after']:>9.1f}s"
                      f"{result['cpu_us']:>13.2f}  {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
