"""The fast paths of enrichment give the same flows as the plain ones: batches the metadata step
says are keyed by index (interfaces keyed on exporter and ifIndex instead of their strings), the
address cache matching whole columns against recent batches' keys, one-value exporter columns
and row drops that skip the columns rewritten next."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows import schema
from flows.enrich import Enricher
from flows.enrich.columns import KeyCache, Profiles, drop_rows, encode, replace
from flows.enrich.exporters import name_fallback
from flows.enrich.metadata import Described, Interface, annotate
from flows.envelope import address_bytes
from flows.settings import Enrichment

EXPORTERS = {address_bytes("192.0.2.1"): "par1-edge1", address_bytes("192.0.2.70"): "lab-edge2",
             address_bytes("198.51.100.3"): ""}  # the last one has no name: its address names it
INTERFACES = {1: Interface("et-0/0/1", "Transit: Cogent AS174", 100000),
              2: Interface("xe-0/0/2.120", "PNI: Netflix [VLAN 120]", 10000),
              3: Interface("fxp0", "", 1000),
              4: Interface("ae4", "Core: par-core1", 400000),
              5: Interface("et-0/0/5", "test link", 100000)}
# ifIndex 6 is unknown to the metadata, 0 is "no interface"
RULES = {
    "exporter": [{"match": {"name": r"^(?P<site>[a-z]{3})\d-"}, "set": {"site": "$site"}},
                 {"match": {"subnet": "192.0.2.64/26"}, "set": {"region": "lab"}}],
    "interface": [
        {"match": {"name": r"^fxp"}, "reject": True},
        {"match": {"exporter": r"^lab-", "description": "test"}, "reject": True},
        {"match": {"description": r"^(Transit|PNI):\s*(?P<p>\w+)"},
         "set": {"connectivity": "external-$p", "provider": "$p", "boundary": "external"}},
        {"match": {"name": r"^(?P<u>xe-\d+/\d+/\d+)\.(?P<v>\d+)$"}, "set": {"name": "$u vlan $v"}},
        {"match": {"description": r"\[VLAN (?P<v>\d+)\]"}, "set": {"description": "vlan $v"}},
        {"match": {"description": "^$", "speed_max": 0}, "set": {"description": "unknown"}},
        {"set": {"boundary": "internal"}}],
}


def decoded(rng: random.Random, n: int, exporters: list[bytes]) -> pa.RecordBatch:
    """Flows as the decoders emit them: no names yet."""
    return schema.make_batch({
        "ExporterAddress": [rng.choice(exporters) for _ in range(n)],
        "InIfIndex": [rng.randrange(0, 7) for _ in range(n)],
        "OutIfIndex": [rng.randrange(0, 7) for _ in range(n)],
        "SrcAddr": [address_bytes(f"10.0.{rng.randrange(4)}.{rng.randrange(256)}") for _ in range(n)],
        "Bytes": list(range(n)), "SamplingRate": [100] * n}, n)


def described(batch: pa.RecordBatch) -> Described:
    return annotate(batch, lambda address: EXPORTERS.get(address) or None,
                    lambda address, ifindex: INTERFACES.get(ifindex))


def enricher() -> Enricher:
    return Enricher(Enrichment.model_validate({
        "classifiers": RULES, "networks": {"10.0.0.0/16": {"name": "corp"}}}))


def test_metadata_step_says_keyed_by_index_of_what_it_fills_from_blank_batches_only() -> None:
    batch = decoded(random.Random(1), 50, list(EXPORTERS))
    assert described(batch).keyed_by_index
    assert described(batch).batch.schema.metadata is None  # said beside the batch, not in its schema
    named = replace(batch, {"InIfName": pa.array(["from the flow"] * 50)})
    assert not described(named).keyed_by_index  # a name the step did not write may differ per row


def test_marked_batches_enrich_exactly_like_unmarked_ones() -> None:
    rng = random.Random(7)
    marked_enricher, plain_enricher = enricher(), enricher()
    exporters = list(EXPORTERS)
    for size, chosen in ((400, exporters), (300, exporters[:1]), (1, exporters[1:2]), (250, exporters)):
        batch, keyed = described(decoded(rng, size, chosen))
        assert keyed
        marked = marked_enricher(batch, keyed_by_index=True)
        plain = plain_enricher(batch, keyed_by_index=False)
        assert marked.equals(plain)
        assert 0 < marked.num_rows < size or size == 1  # some rows rejected
    # what the rules did, so that the equality above is about something
    rows = marked.to_pylist()
    assert {r["InIfName"] for r in rows} >= {"xe-0/0/2 vlan 120", "et-0/0/1"}
    assert "fxp0" not in {r["InIfName"] for r in rows} | {r["OutIfName"] for r in rows}
    assert not any(r["ExporterName"] == "lab-edge2" and "test link" in (r["InIfDescription"], r["OutIfDescription"])
                   for r in rows)
    assert {r["InIfProvider"] for r in rows} == {"", "cogent", "netflix"}
    assert {r["ExporterSite"] for r in rows} == {"par", ""}
    assert {r["ExporterRegion"] for r in rows if r["ExporterName"] == "lab-edge2"} == {"lab"}
    assert {r["ExporterName"] for r in rows if r["ExporterAddress"] == address_bytes("198.51.100.3")} == {
        "198.51.100.3"}


def test_decoded_batches_without_metadata_are_keyed_too() -> None:
    """Without SNMP or static metadata every name is empty: the chain keys the batch by index itself."""
    batch = name_fallback(decoded(random.Random(3), 200, list(EXPORTERS)))
    marked = enricher().chain.classification.apply(batch, keyed_by_index=True)
    plain = enricher().chain.classification.apply(batch)
    assert marked.equals(plain)
    assert set(marked.column("InIfDescription").to_pylist()) == {"unknown"}
    assert set(marked.column("InIfBoundary").to_pylist()) == {schema.BOUNDARIES.index("internal")}


def test_row_ids_agree_with_the_maps_and_resolve_each_key_once() -> None:
    calls: list[bytes] = []

    def resolve(key: bytes) -> tuple:
        calls.append(key)
        return (f"v{key[-1] % 5}",)

    profiles = Profiles(("value",))
    cache = KeyCache("address", profiles, resolve)
    rng = np.random.default_rng(5)
    pool = [bytes(14) + i.to_bytes(2, "big") for i in range(3000)]
    for batch in range(12):
        # a skewed draw from the pool, plus keys never seen in the last batches
        chosen = [pool[i] for i in np.minimum(rng.pareto(1.0, 4000) * 30, 2999).astype(int)]
        chosen += [bytes(15) + bytes([batch])] * 3
        values = pa.array(chosen, pa.binary(16)).slice(2)  # an offset, as a sliced batch has
        ids = cache.row_ids(values)
        assert profiles.take_strings("value", ids).to_pylist() == [f"v{k[-1] % 5}" for k in chosen[2:]]
        assert len(cache.recent) <= max(len(values) // 4, 1024) + len(set(chosen))
    assert len(calls) == len(set(calls))  # never resolved twice: recent set and maps agree
    cache.clear()
    assert cache.row_ids(pa.array([pool[0]] * 3, pa.binary(16))).tolist() == [0, 0, 0]


def test_encode_of_a_single_address_matches_arrow() -> None:
    one = pa.array([address_bytes("192.0.2.1")] * 10, pa.binary(16))
    two = pa.array([address_bytes("192.0.2.1")] * 9 + [address_bytes("192.0.2.2")], pa.binary(16))
    for array in (one, two, two.slice(3), one.slice(4, 3)):
        index, distinct = encode(array)
        reference = pc.dictionary_encode(array)
        assert index.tolist() == reference.indices.to_pylist()
        assert distinct.to_pylist() == reference.dictionary.to_pylist()


def test_rewritten_columns_are_not_copied_by_a_drop() -> None:
    batch = schema.make_batch({"InIfName": ["a", "b", "c"], "OutIfName": ["x", "y", "z"],
                               "Bytes": [1, 2, 3]}, 3)
    out = drop_rows(batch, np.array([True, False, True]), rewritten=["InIfName"])
    assert out.num_rows == 2 and len(out.column("InIfName")) == 2
    assert out.column("OutIfName").to_pylist() == ["x", "z"]
    assert out.column("Bytes").to_pylist() == [1, 3]
