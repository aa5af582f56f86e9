"""Classification: the shipped example rules on realistic interface descriptions, first decision
wins, reject rules (counted), renames, exporter rules, caching, and bad rules named at startup."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from flows import schema
from flows.enrich import Enricher, classify
from flows.enrich.columns import LOOKUPS, drop_rows
from flows.envelope import address_bytes
from flows.settings import ConfigError, Enrichment, load_settings

ROOT = Path(__file__).resolve().parent.parent


def flows(interfaces: list[tuple[str, str, int]], exporter: str = "192.0.2.1",
          name: str = "par-edge1", out: tuple[str, str, int] = ("ae0", "Core: par-core1", 100000)
          ) -> pa.RecordBatch:
    """One flow per (name, description, speed) input interface, all leaving by `out`."""
    n = len(interfaces)
    names, descriptions, speeds = zip(*interfaces) if n else ((), (), ())
    return schema.make_batch({
        "ExporterAddress": [address_bytes(exporter)] * n, "ExporterName": [name] * n,
        "InIfName": list(names), "InIfDescription": list(descriptions), "InIfSpeed": list(speeds),
        "OutIfName": [out[0]] * n, "OutIfDescription": [out[1]] * n, "OutIfSpeed": [out[2]] * n,
        "SamplingRate": [1] * n, "Bytes": [100] * n}, n)


def rules(text: str, tmp_path: Path) -> Enrichment:
    path = tmp_path / "dataflows.yaml"
    path.write_text(text)
    return load_settings(path).enrichment


REALISTIC = [
    ("et-0/0/0", "Transit: Cogent AS174 [100G] circuit 1-2345", 100000),
    ("et-0/0/1", "Transit: Lumen AS3356", 100000),
    ("et-0/0/2", "PNI: Netflix (AS2906) par-pni-01", 100000),
    ("xe-1/0/0", "PNI: Google", 10000),
    ("xe-1/0/1", "IX: France-IX Paris (peering LAN)", 10000),
    ("ae0", "Core: par-core1 ae3", 400000),
    ("ge-0/0/9", "", 1000),
    ("lo0", "Transitional lab link", 0),
]


def test_shipped_rules_classify_realistic_descriptions() -> None:
    out = Enricher(load_settings(ROOT / "dataflows.yaml").enrichment)(flows(REALISTIC))
    assert out.column("InIfConnectivity").to_pylist() == [
        "transit", "transit", "pni", "pni", "ix", "", "", ""]
    assert out.column("InIfProvider").to_pylist() == [
        "cogent", "lumen", "netflix", "google", "france-ix", "", "", ""]
    boundaries = [schema.BOUNDARIES[b] for b in out.column("InIfBoundary").to_pylist()]
    assert boundaries == ["external"] * 5 + ["undefined"] * 3
    assert set(out.column("OutIfConnectivity").to_pylist()) == {""}


def test_first_decision_wins_rename_and_reject(tmp_path: Path) -> None:
    cfg = rules(r"""
enrichment:
  classifiers:
    interface:
      - match: {name: '^(mgmt|fxp|em)\d'}
        reject: true
      - match: {description: '^Transit: (?P<provider>\w+)', speed_min: 10000}
        set: {connectivity: transit, provider: $provider, boundary: external}
      - match: {description: '^Transit: '}
        set: {connectivity: slow-transit, provider: unknown}
      - match: {description: '^Core: (?P<peer>\S+)'}
        set: {boundary: internal, description: 'to $peer'}
      - match: {name: '^(?P<unit>ge-\d+/\d+/\d+)\.(?P<vlan>\d+)$'}
        set: {name: '${unit} vlan ${vlan}'}
      - match: {speed_max: 0}
        set: {connectivity: unknown-speed}
      - set: {boundary: internal}
""", tmp_path)
    before = classify.REJECTED.labels("interface")._value.get()
    out = Enricher(cfg)(flows([
        ("et-0/0/0", "Transit: Cogent", 100000),
        ("ge-0/0/1", "Transit: Tiny", 1000),
        ("ae0", "Core: par-core1", 400000),
        ("mgmt0", "Transit: management network", 1000),
        ("ge-0/0/2.120", "", 1000),
        ("lo0", "", 0),
    ]))
    assert out.column("InIfConnectivity").to_pylist() == ["transit", "slow-transit", "", "",
                                                          "unknown-speed"]
    assert out.column("InIfProvider").to_pylist() == ["cogent", "unknown", "", "", ""]
    assert [schema.BOUNDARIES[b] for b in out.column("InIfBoundary").to_pylist()] == [
        "external", "internal", "internal", "internal", "internal"]
    assert out.column("InIfDescription").to_pylist() == [
        "Transit: Cogent", "Transit: Tiny", "to par-core1", "", ""]
    assert out.column("InIfName").to_pylist() == ["et-0/0/0", "ge-0/0/1", "ae0", "ge-0/0/2 vlan 120",
                                                  "lo0"]
    assert out.column("OutIfDescription").to_pylist() == ["to par-core1"] * 5
    assert classify.REJECTED.labels("interface")._value.get() == before + 1


def test_reject_after_every_attribute_is_decided_and_by_output_interface(tmp_path: Path) -> None:
    cfg = rules(r"""
enrichment:
  classifiers:
    interface:
      - set: {connectivity: any, provider: any, boundary: internal, name: x, description: y}
      - match: {description: 'DROP ME'}
        reject: true
""", tmp_path)
    out = Enricher(cfg)(flows([("a", "keep", 1), ("b", "keep", 1)], out=("c", "please DROP ME", 1)))
    assert out.num_rows == 0
    kept = Enricher(cfg)(flows([("a", "DROP ME", 1), ("b", "keep", 1)], out=("c", "", 1)))
    assert kept.column("InIfName").to_pylist() == ["x"]


def test_exporter_rules(tmp_path: Path) -> None:
    cfg = rules(r"""
enrichment:
  classifiers:
    exporter:
      - match: {subnet: 198.51.100.0/24}
        reject: true
      - match: {name: '^(?P<site>[a-z]{3})-(?P<role>edge|core)\d+$'}
        set: {site: $site, role: $role, group: backbone}
      - match: {subnet: 192.0.2.0/24}
        set: {region: eu-west, group: lab, tenant: ops}
""", tmp_path)
    enrich = Enricher(cfg)
    out = enrich(flows([("a", "", 1)], "192.0.2.1", "par-edge1"))
    assert [out.column(c).to_pylist() for c in ("ExporterSite", "ExporterRole", "ExporterGroup",
                                                 "ExporterRegion", "ExporterTenant")] == [
        ["par"], ["edge"], ["backbone"], ["eu-west"], ["ops"]]
    other = enrich(flows([("a", "", 1)], "2001:db8::1", "lab-switch"))
    assert other.column("ExporterGroup").to_pylist() == [""]
    before = classify.REJECTED.labels("exporter")._value.get()
    assert enrich(flows([("a", "", 1)] * 3, "198.51.100.9", "par-edge2")).num_rows == 0
    assert classify.REJECTED.labels("exporter")._value.get() == before + 3


def test_decisions_are_cached_per_distinct_interface() -> None:
    enrich = Enricher(load_settings(ROOT / "dataflows.yaml").enrichment)
    misses = LOOKUPS.labels("interface", "miss")
    before = misses._value.get()
    enrich(flows(REALISTIC * 100))
    # 8 distinct input interfaces + 1 output interface, whatever the number of flows
    assert misses._value.get() == before + 9
    enrich(flows(REALISTIC[:3] * 50))
    assert misses._value.get() == before + 9


def test_template_giving_a_bad_boundary_is_counted(tmp_path: Path) -> None:
    cfg = rules(r"""
enrichment:
  classifiers:
    interface:
      - match: {description: '^(?P<b>\w+)-facing'}
        set: {boundary: $b}
      - set: {boundary: internal}
""", tmp_path)
    before = classify.ERRORS.labels("invalid_boundary")._value.get()
    out = Enricher(cfg)(flows([("a", "external-facing", 1), ("b", "sideways-facing", 1)]))
    assert [schema.BOUNDARIES[b] for b in out.column("InIfBoundary").to_pylist()] == [
        "external", "internal"]
    assert classify.ERRORS.labels("invalid_boundary")._value.get() == before + 1


@pytest.mark.parametrize(("rule", "key", "reason"), [
    ("{match: {description: '^Transit: (?P<p>\\w+'}, set: {provider: $p}}",
     "enrichment.classifiers.interface[2].match.description", "not a regular expression RE2 accepts"),
    ("{match: {description: '^Transit: (?P<p>\\w+)'}, set: {provider: $provider}}",
     "enrichment.classifiers.interface[2]", "set.provider: $provider is not a named group"),
    ("{match: {name: x}, set: {boundary: outside}}",
     "enrichment.classifiers.interface[2]", "set.boundary: must be one of external, internal"),
    ("{match: {name: x}}", "enrichment.classifiers.interface[2]", "must set an attribute or reject"),
    ("{match: {name: x}, set: {provider: 'a $'}}", "enrichment.classifiers.interface[2]",
     "not a valid template"),
    ("{match: {ifname: x}, reject: true}", "enrichment.classifiers.interface[2].match.ifname",
     "unknown key"),
    ("{set: {group: x}}", "enrichment.classifiers.interface[2].set.group", "unknown key"),
])
def test_bad_rule_is_a_startup_error_naming_it(tmp_path: Path, rule: str, key: str,
                                                reason: str) -> None:
    path = tmp_path / "dataflows.yaml"
    path.write_text("enrichment:\n  classifiers:\n    interface:\n"
                    "      - {match: {name: a}, reject: true}\n"
                    "      - {set: {boundary: internal}}\n"
                    f"      - {rule}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    lines = [line.strip() for line in str(err.value).splitlines()]
    assert any(line.startswith(f"{key}:") and reason in line for line in lines), str(err.value)


def test_documented_example_rules_are_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "enrichment.md").read_text()
    block = text.split("the others show the remaining forms:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    cfg = rules(block, tmp_path)
    out = Enricher(cfg)(flows([("fxp0", "", 1000), ("et-0/0/0", "PNI: Netflix", 100000),
                               ("ae1", "Core: par-core2", 100000)], name="par1-edge2"))
    assert out.column("InIfConnectivity").to_pylist() == ["pni", ""]
    assert out.column("ExporterSite").to_pylist() == ["par", "par"]
    assert [schema.BOUNDARIES[b] for b in out.column("InIfBoundary").to_pylist()] == [
        "external", "internal"]


def test_dropped_rows_keep_every_other_column() -> None:
    n = 6
    batch = schema.make_batch({
        "Bytes": list(range(n)), "InIfName": [f"if{i}" for i in range(n)],
        "MPLSLabels": [[i] if i % 2 else [] for i in range(n)], "DstASPath": [[]] * n}, n)
    keep = [True, False, True, True, False, True]
    out = drop_rows(batch, pa.array(keep).to_numpy(zero_copy_only=False))
    assert out.schema == schema.ARROW_SCHEMA
    assert out.column("Bytes").to_pylist() == [0, 2, 3, 5]
    assert out.column("InIfName").to_pylist() == ["if0", "if2", "if3", "if5"]
    assert out.column("MPLSLabels").to_pylist() == [[], [], [3], [5]]
    assert out.column("DstASPath").to_pylist() == [[]] * 4  # held nothing: rebuilt empty
    assert out.column("SrcNetName").to_pylist() == [""] * 4
    sliced = drop_rows(batch.slice(2), pa.array(keep[2:]).to_numpy(zero_copy_only=False))
    assert sliced.column("InIfName").to_pylist() == ["if2", "if3", "if5"]


def test_a_pattern_that_backtracks_exponentially_in_python_cannot_stall_classification(tmp_path: Path) -> None:
    """`^(\\w+\\s?)*$` against a 40-character name that almost matches takes Python's `re`
    about 2^40 steps; RE2 (flows/regex.py) matches in time linear in the name."""
    import time

    cfg = rules(r"""
enrichment:
  classifiers:
    interface:
      - match: {description: '^(\w+\s?)*$'}
        set: {connectivity: words}
""", tmp_path)
    near_miss = "a" * 40 + "!"
    started = time.monotonic()
    out = Enricher(cfg)(flows([("et-0", near_miss, 1000), ("et-1", "two words", 1000)]))
    assert time.monotonic() - started < 5  # (Python's re: hours)
    assert out.column("InIfConnectivity").to_pylist() == ["", "words"]
