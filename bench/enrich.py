"""Enrichment benchmark: cost per flow of the Enricher (classification, GeoIP/networks,
sampling) on 50k-row batches with warm caches.

    .venv/bin/python bench/enrich.py [--rows 50000] [--batches 20] [--addresses 20000]

The batches are what the outlet's enrich step receives: decoded flows of 20 exporters with 48
interfaces each, passed through the metadata step with a warm SNMP cache (names, descriptions
such as Transit/PNI/IX/Core/customer, speeds), source and destination addresses drawn (skewed)
from a pool of --addresses IPv4 and IPv6 addresses; generated MaxMind-layout ASN and City
databases (2,000 networks each), 60 configured networks, 20 classification rules (4 exporter,
16 interface). Every batch is a new draw from the same pools, so caches are warm after the
first batch, as in a running outlet. Prints the cold first batch, then the warm cost per flow,
in total and per step, and the same batches without the metadata step's keyed_by_index
(the path of batches built some other way: interface names and descriptions hashed).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.metadata import NoPolls, warm_cache  # noqa: E402
from connectors.geoip import open_geoip  # noqa: E402
from flows import schema  # noqa: E402
from flows.enrich import Enricher  # noqa: E402
from flows.enrich.columns import fixed_values  # noqa: E402
from flows.enrich.exporters import name_fallback  # noqa: E402
from flows.enrich.metadata import Interface, Metadata, MetadataLogic, MetadataState  # noqa: E402
from flows.settings import SNMP, Enrichment  # noqa: E402
from tests.mmdb import maxmind_asn, maxmind_city, write_mmdb  # noqa: E402

EXPORTERS = 20
INTERFACES = 48
DESCRIPTIONS = ["Transit: Cogent AS174 [100G]", "Transit: Lumen AS3356", "PNI: Netflix (AS2906)",
                "PNI: Google", "PNI: Meta", "IX: France-IX Paris", "IX: AMS-IX", "Core: to core{}",
                "Customer: ACME-{} [VLAN {}]", "Customer: Globex-{}", "", "Backbone: {}"]
INTERFACE_RULES = [
    {"match": {"name": r"^(fxp|em|mgmt)\d"}, "reject": True},
    {"match": {"description": r"^Transit:\s*(?P<p>[\w.-]+)", "speed_min": 10000},
     "set": {"connectivity": "transit", "provider": "$p", "boundary": "external"}},
    {"match": {"description": r"^Transit:\s*(?P<p>[\w.-]+)"},
     "set": {"connectivity": "transit", "provider": "$p", "boundary": "external"}},
    {"match": {"description": r"^PNI:\s*(?P<p>[\w.-]+)"},
     "set": {"connectivity": "pni", "provider": "$p", "boundary": "external"}},
    {"match": {"description": r"^IX:\s*(?P<p>[\w.-]+)"},
     "set": {"connectivity": "ix", "provider": "$p", "boundary": "external"}},
    {"match": {"description": r"^Customer:\s*(?P<c>[\w]+)"},
     "set": {"connectivity": "customer", "provider": "$c", "boundary": "external"}},
    {"match": {"description": r"^(Core|Backbone):"}, "set": {"connectivity": "core", "boundary": "internal"}},
    {"match": {"name": r"^ae\d+$"}, "set": {"boundary": "internal"}},
    {"match": {"exporter": r"^lab-"}, "reject": True},
    {"match": {"exporter_subnet": "198.18.0.0/15"}, "set": {"boundary": "internal"}},
    {"match": {"name": r"^(?P<u>xe-\d+/\d+/\d+)\.(?P<v>\d+)$"}, "set": {"name": "$u vlan $v"}},
    {"match": {"description": r"\[VLAN (?P<v>\d+)\]"}, "set": {"description": "vlan $v"}},
    {"match": {"speed_max": 1000}, "set": {"connectivity": "access"}},
    {"match": {"description": r"(?i)test"}, "reject": True},
    {"match": {"exporter": r"-edge\d+$", "description": r"^$"}, "set": {"boundary": "external"}},
    {"set": {"boundary": "internal"}},
]
EXPORTER_RULES = [
    {"match": {"name": r"^(?P<site>[a-z]{3})\d-(?P<role>edge|core)\d+$"},
     "set": {"site": "$site", "role": "$role", "group": "backbone"}},
    {"match": {"subnet": "192.0.2.0/26"}, "set": {"region": "eu-west", "tenant": "ops"}},
    {"match": {"subnet": "192.0.2.64/26"}, "set": {"region": "us-east", "tenant": "ops"}},
    {"match": {"name": "^lab"}, "reject": True},
]


def random_v6(rng: random.Random) -> bytes:
    return ipaddress.IPv6Address((0x2a00 << 112) | rng.getrandbits(96)).packed


def random_v4(rng: random.Random) -> bytes:
    return ipaddress.IPv6Address(0xFFFF00000000 | rng.getrandbits(32)).packed


def databases(directory: Path, rng: random.Random) -> tuple[Path, Path]:
    asn, city = {}, {}
    for i in range(2000):
        v4 = ipaddress.IPv4Network((rng.getrandbits(16) << 16, 16))
        v6 = ipaddress.IPv6Network(((0x2a00 << 112) | (rng.getrandbits(16) << 96), 32))
        for network in (v4, v6) if i % 4 == 0 else (v4,):
            asn[str(network)] = maxmind_asn(rng.randint(1, 400000))
            city[str(network)] = maxmind_city(rng.choice(["FR", "US", "DE", "JP", "BR", "GB"]),
                                              f"city{i % 300}", f"state{i % 50}")
    return (write_mmdb(directory / "asn.mmdb", asn, "GeoLite2-ASN"),
            write_mmdb(directory / "city.mmdb", city))


def settings(asn: Path, city: Path, rng: random.Random) -> Enrichment:
    networks = {f"10.{i}.0.0/16": {"name": f"dc{i}", "site": f"site{i % 7}", "role": "servers"}
                for i in range(40)}
    networks.update({f"10.{i}.{j}.0/24": {"tenant": f"tenant{j}"} for i in range(4) for j in range(5)})
    return Enrichment.model_validate({
        "geoip": {"asn_database": [str(asn)], "geo_database": [str(city)]},
        "networks": networks,
        "classifiers": {"exporter": EXPORTER_RULES, "interface": INTERFACE_RULES},
        "sampling": {"default": 1000, "override": {"192.0.2.128/25": 4000}},
    })


class Traffic:
    """Skewed draws from fixed pools of exporters, interfaces and addresses."""

    def __init__(self, rng: random.Random, addresses: int) -> None:
        self.rng = np.random.default_rng(rng.getrandbits(32))
        pool = [random_v4(rng) if i % 4 else random_v6(rng) for i in range(addresses)]
        pool[: addresses // 10] = [ipaddress.IPv6Address(0xFFFF0A000000 | rng.getrandbits(22)).packed
                                   for _ in range(addresses // 10)]  # some inside 10.0.0.0/10
        self.addresses = np.frombuffer(b"".join(pool), "S16")
        self.exporters = np.frombuffer(b"".join(
            ipaddress.IPv6Address(0xFFFFC0000200 | (i * 7)).packed for i in range(EXPORTERS)), "S16")
        names = []
        for e in range(EXPORTERS):
            names.append([f"{'parfraams'[3 * (e % 3):3 * (e % 3) + 3]}{e % 4}-{'edge' if e % 2 else 'core'}{e}"])
        self.exporter_names = [n[0] for n in names]
        self.interfaces = []  # per exporter: (name, description, speed)
        for e in range(EXPORTERS):
            rows = []
            for i in range(INTERFACES):
                template = DESCRIPTIONS[(e + i) % len(DESCRIPTIONS)]
                name = f"xe-0/0/{i}.{100 + i}" if i % 5 == 0 else (f"ae{i}" if i % 7 == 0 else f"et-0/1/{i}")
                if i == INTERFACES - 1:
                    name, template = "fxp0", ""  # management: rejected
                rows.append((name, template.format(i, e, 100 + i), [1000, 10000, 100000][i % 3]))
            self.interfaces.append(rows)
        self.metadata = self.metadata_step()

    def skewed(self, size: int, count: int) -> np.ndarray:
        return np.minimum((self.rng.pareto(1.2, count) * size / 20).astype(np.int64), size - 1)

    def metadata_step(self) -> MetadataLogic:
        """The outlet's metadata step with every exporter's sysName and interfaces cached."""
        now = time.time()
        addresses = fixed_values(pa.array(self.exporters, pa.binary(16)))
        caches = {address: warm_cache(name, {i + 1: Interface(*interface)
                                             for i, interface in enumerate(interfaces)}, now)
                  for address, name, interfaces in zip(addresses, self.exporter_names, self.interfaces)}
        return MetadataLogic(Metadata(SNMP(enabled=True), {}, NoPolls()),
                             MetadataState(exporters=caches, next_check=now + 3600))

    def described(self, rows: int, exporter: int | None = None, new: int = 0) -> pa.RecordBatch:
        """A batch as the metadata step hands it to the enrich step (keyed by index)."""
        out, _ = self.metadata.on_batch([self.batch(rows, exporter, new)])
        assert out[0].keyed_by_index
        return out[0].batch

    def batch(self, rows: int, exporter: int | None = None, new: int = 0) -> pa.RecordBatch:
        """Flows of every exporter, or of one, as decoded (no names yet); the first `new` flows
        come from addresses never seen before."""
        if exporter is None:
            exporter = self.rng.integers(0, EXPORTERS, rows)
        else:
            exporter = np.full(rows, exporter)
        columns: dict[str, object] = {
            "ExporterAddress": self.exporters[exporter],
            "SrcAddr": self.addresses[self.skewed(len(self.addresses), rows)],
            "DstAddr": self.addresses[self.skewed(len(self.addresses), rows)],
            "SrcAS": np.where(self.rng.random(rows) < 0.3, self.rng.integers(1, 70000, rows), 0),
            "SamplingRate": np.where(self.rng.random(rows) < 0.5, 0, 1000).astype(np.uint64),
            "Bytes": self.rng.integers(40, 1500, rows).astype(np.uint64), "Packets": np.ones(rows, np.uint64),
        }
        for side in ("In", "Out"):
            columns[f"{side}IfIndex"] = self.rng.integers(0, INTERFACES, rows) + 1
        if new:
            fresh = self.rng.integers(0, 2**32, new, dtype=np.uint64) | np.uint64(0xFFFF00000000)
            columns["SrcAddr"] = columns["SrcAddr"].copy()
            columns["SrcAddr"][:new] = np.array([int(a).to_bytes(16, "big") for a in fresh], "S16")
        for name in ("ExporterAddress", "SrcAddr", "DstAddr"):
            raw = np.ascontiguousarray(columns[name])
            columns[name] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), len(raw), [None, pa.py_buffer(raw.tobytes())])
        return schema.make_batch(columns, rows)


def timed(function, batches: list[pa.RecordBatch]) -> float:
    """CPU seconds of the process (the machine is shared: CPU time is steadier than wall time),
    best of three passes."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for batch in batches:
            function(batch)
        best = min(best, time.process_time() - start)
    return best


def report(label: str, enricher: Enricher, batches: list[pa.RecordBatch]) -> None:
    flows = sum(b.num_rows for b in batches)
    total = timed(lambda batch: enricher(batch, keyed_by_index=True), batches)
    # Per step, on batches already through the steps before it (as in the chain).
    chain = enricher.chain
    named = [name_fallback(b) for b in batches]
    classified = [chain.classification.apply(b, True) for b in named]
    located = [chain.addresses.apply(b) for b in classified]
    steps = {
        "exporter name fallback": timed(name_fallback, batches),
        "classification": timed(lambda batch: chain.classification.apply(batch, True), named),
        "GeoIP + networks": timed(chain.addresses.apply, classified),
        "sampling": timed(chain.sampling.apply, located),
    }
    print(f"  {label}: {total * 1e6 / flows:.3f} us/flow ({flows / total:,.0f} flows/s per core)")
    for name, seconds in steps.items():
        print(f"    {name:<24} {seconds * 1e6 / flows:.3f} us/flow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--addresses", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as directory:
        asn, city = databases(Path(directory), rng)
        cfg = settings(asn, city, rng)
        enricher = Enricher(cfg, open_geoip(cfg.geoip))
    traffic = Traffic(rng, args.addresses)
    mixed = [traffic.described(args.rows) for _ in range(args.batches + 1)]
    single = [traffic.described(args.rows, exporter=i % EXPORTERS) for i in range(args.batches)]
    start = time.process_time()
    first = enricher(mixed[0], keyed_by_index=True)
    cold = time.process_time() - start
    print(f"enrichment, batches of {args.rows:,} rows, {args.addresses:,} addresses in the pool, "
          f"{len(INTERFACE_RULES) + len(EXPORTER_RULES)} rules "
          f"({100 * (1 - first.num_rows / args.rows):.1f}% of flows rejected); CPU time per flow")
    print(f"  cold first batch: {cold * 1e6 / args.rows:.3f} us/flow")
    report(f"warm, {EXPORTERS} exporters mixed in each batch", enricher, mixed[1:])
    report("warm, one exporter per batch (as the outlet's per-exporter decode step emits)",
           enricher, single)
    print(f"  the same without the metadata step's keyed_by_index (names hashed): "
          f"{timed(enricher, single) * 1e6 / (args.rows * args.batches):.3f} us/flow")
    # Not warm: new addresses in every batch reach the GeoIP readers. Each pass of timed() draws
    # the same addresses again, so only the first pass pays: time one pass of fresh batches.
    for new in (1_000, 10_000):
        fresh = [traffic.described(args.rows, exporter=i % EXPORTERS, new=new) for i in range(args.batches)]
        start = time.process_time()
        for batch in fresh:
            enricher(batch, keyed_by_index=True)
        seconds = time.process_time() - start
        print(f"  {new:,} new addresses in each batch (one exporter per batch): "
              f"{seconds * 1e6 / (args.rows * args.batches):.3f} us/flow")


if __name__ == "__main__":
    main()
