"""The demo's attacks (flows/demo.py Traffic.attack), as the flows the outlet would store from
what the demo exporter sends, fire the shipped default rule each is meant for within two windows, while
ordinary demo traffic fires none."""

from __future__ import annotations

import pytest

from flows import demo
from flows.alerts_step import DetectLogic, RuleBank
from flows.settings.alerts import Alerts
from tests.test_alerts_step import Clock

ROUTER = demo.ROUTERS[0]  # NetFlow v9, 1:1000


def _batches(attack: str | None, seconds: int, start: int = 1_800_000_000, rate: int = 300, attack_rate: int = 60):
    """Flows as the outlet stores them: the demo's records with its enrichment's sampling."""
    from flows import schema

    traffic = demo.Traffic(seed=3)
    out = []
    for t in range(seconds):
        flows = traffic.flows(ROUTER, rate, (start + t) * 1000)
        if attack:
            flows += traffic.attack(attack, ROUTER, attack_rate, (start + t) * 1000)
        v4 = lambda n: bytes(10) + b"\xff\xff" + n.to_bytes(4, "big")  # noqa: E731
        out.append(schema.make_batch({
            "TimeReceived": [start + t] * len(flows), "SamplingRate": [ROUTER.sampling] * len(flows),
            "SrcAddr": [v4(f.src) for f in flows], "DstAddr": [v4(f.dst) for f in flows],
            "Proto": [f.proto for f in flows], "SrcPort": [f.sport for f in flows], "DstPort": [f.dport for f in flows],
            "TCPFlags": [f.tcp_flags for f in flows], "Bytes": [f.octets for f in flows],
            "Packets": [f.packets for f in flows]}, len(flows)))
    return out


def _fired(batches) -> set[str]:
    rules = [r.rule() for r in Alerts().all_rules()]
    bank, clock = RuleBank(rules), Clock(batches[0].column("TimeReceived")[0].as_py())
    logics = {r.name: DetectLogic({r.name: r}, None, clock) for r in rules}
    fired = set()
    for batch in batches:
        clock.now += 1
        for name, partial in bank.partials(batch):
            fired |= {e.rule for e, _ in logics[name].on_item(partial)[0] if e.kind == "start"}
    return fired


@pytest.mark.parametrize("attack, rule", [("amplification", "udp-amplification"), ("syn", "syn-flood"),
                                          ("carpet", "carpet-bombing")])
def test_each_demo_attack_fires_its_default_rule_within_two_windows(attack, rule) -> None:
    rate = {"amplification": 60, "syn": 100, "carpet": 400}[attack]
    assert rule in _fired(_batches(attack, 20 + 10, attack_rate=rate))  # 10 s minimum + two 10 s windows


def test_ordinary_demo_traffic_fires_nothing() -> None:
    assert _fired(_batches(None, 120, rate=1000)) == set()
