"""Metadata step benchmark: cost per flow of the outlet's `metadata` step (exporter and interface
names, descriptions, speeds) on 50k-row batches with a warm SNMP cache — the steady state.

    .venv/bin/python bench/metadata.py [--rows 50000] [--interfaces 200] [--seconds 3]

One exporter per batch (the step is keyed by exporter), In/Out ifIndexes drawn from
--interfaces interfaces, all of them cached (so no poll and no holding): what is measured is
the batch walk (unique keys, lookups, column take). The same batches through the step with
SNMP and static metadata both off (a pass-through) are printed for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows import schema  # noqa: E402
from flows.enrich.metadata import (  # noqa: E402
    SYSTEM,
    Entry,
    ExporterCache,
    Interface,
    Metadata,
    MetadataLogic,
    MetadataState,
    PollResult,
)
from flows.envelope import address_bytes  # noqa: E402
from flows.settings import SNMP  # noqa: E402


class NoPolls:
    """The cache is warm: a poll would mean the benchmark measures the wrong thing."""

    def poll(self, exporter: str, ifindexes) -> Future[PollResult]:
        raise AssertionError(f"unexpected poll of {exporter} for {list(ifindexes)[:5]}")


def warm_cache(name: str, interfaces: dict[int, Interface], now: float) -> ExporterCache:
    """An exporter's cache as SNMP left it: its sysName and these interfaces, fresh."""
    cache = ExporterCache()
    cache.entries[SYSTEM] = Entry(name, now, now)
    for index, interface in interfaces.items():
        cache.entries[index] = Entry(interface, now, now)
    return cache


def warm_state(address: bytes, interfaces: int, now: float) -> MetadataState:
    cache = warm_cache("edge-1.example.net", {
        index: Interface(f"Ethernet{index}/1", f"Transit: Provider {index}", 100_000)
        for index in range(1, interfaces + 1)}, now)
    return MetadataState(exporters={address: cache}, next_check=now + 3600)


def measure(logic: MetadataLogic, batches, seconds: float) -> float:
    """Best µs per flow over runs of at least `seconds`."""
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for batch in batches:
            start = time.perf_counter()
            out, _ = logic.on_batch([batch])
            elapsed = time.perf_counter() - start
            assert len(out) == 1
            best = min(best, elapsed / batch.num_rows * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--interfaces", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    address = address_bytes("192.0.2.1")
    rng = np.random.default_rng(1)
    batches = [schema.make_batch({
        "ExporterAddress": [address] * args.rows,
        "InIfIndex": rng.integers(1, args.interfaces + 1, args.rows, dtype=np.uint32),
        "OutIfIndex": rng.integers(0, args.interfaces + 1, args.rows, dtype=np.uint32),
    }, args.rows) for _ in range(4)]

    now = time.time()
    warm = MetadataLogic(Metadata(SNMP(enabled=True), {}, NoPolls()), warm_state(address, args.interfaces, now))
    off = MetadataLogic(Metadata(SNMP(enabled=False), {}, None), None)
    out, _ = warm.on_batch([batches[0]])
    assert out[0].column("InIfName").null_count == 0 and out[0].column("InIfName")[0].as_py()

    print(f"metadata step, {args.rows:,}-row batches, {args.interfaces} interfaces, warm cache:")
    print(f"  SNMP cache   {measure(warm, batches, args.seconds):.3f} µs/flow")
    print(f"  pass-through {measure(off, batches, args.seconds):.3f} µs/flow (SNMP and static off)")


if __name__ == "__main__":
    main()
