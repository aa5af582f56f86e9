"""Detection as a Bytewax stateful operator: partials of several workers' batches are counted
once per key; an attack that stops dead still ends (time moves with the clock when no flows
come); a detector resumed from its snapshot mid-attack does not fire again and still ends; and
the operator runs in a real Bytewax dataflow."""

from __future__ import annotations

from flows.alerts_step import DetectLogic, RuleBank
from tests.test_detect import NOW, VICTIM, _amplification, _second, _v4


class Clock:
    """A wall clock the test moves: it starts where the test traffic's own time does."""

    def __init__(self, start: float = NOW) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


def _events(logic, bank, seconds, clock, split: int = 1):
    out = []
    for t in seconds:
        batch = _second(NOW + t, 100 <= t < 160)
        clock.now += 1
        size = -(-batch.num_rows // split)
        for part in range(split):  # as if `split` workers each had a share of the second's flows
            for _, partial in bank.partials(batch.slice(part * size, size)):
                out += logic.on_item(partial)[0]
    return out


def test_partials_from_several_workers_count_once_and_carry_the_signature() -> None:
    rule = _amplification()
    bank, clock = RuleBank([rule]), Clock()
    whole = _events(DetectLogic({rule.name: rule}, None, clock), bank, range(200), clock)
    split = _events(DetectLogic({rule.name: rule}, None, clock), bank, range(200), clock, split=3)
    assert [(e.kind, e.start) for e, _ in whole] == [("start", NOW + 104), ("end", NOW + 104)]
    assert [(e, s) for e, s in split] == [(e, s) for e, s in whole]
    assert whole[0][1]["source_ports"] == [123] and whole[0][1]["protocols"] == [17]


def test_an_attack_that_stops_dead_ends_with_the_clock() -> None:
    rule = _amplification()
    bank, clock = RuleBank([rule]), Clock()
    logic = DetectLogic({rule.name: rule}, None, clock)
    events = _events(logic, bank, range(0, 150), clock)  # the attack is on at 149 when flows stop
    assert [e.kind for e, _ in events] == ["start"]
    for _ in range(60):  # no flows at all: the clock moves
        clock.now += 1
        events += logic.on_notify()[0]
    assert [e.kind for e, _ in events] == ["start", "end"]


def test_a_resumed_detector_does_not_fire_again_and_still_ends() -> None:
    rule = _amplification()
    bank, clock = RuleBank([rule]), Clock()
    first = DetectLogic({rule.name: rule}, None, clock)
    before = _events(first, bank, range(0, 130), clock)
    snapshot = first.snapshot()
    resumed = DetectLogic({rule.name: rule}, snapshot, clock)
    after = _events(resumed, bank, range(130, 220), clock)
    assert [e.kind for e, _ in before] == ["start"] and [e.kind for e, _ in after] == ["on", "end"]
    assert after[0][0].start == after[1][0].start == before[0][0].start  # ("on": said again, not fired)


def test_the_operator_in_a_real_dataflow() -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    rule = _amplification()
    bank = RuleBank([rule])
    batches = [_second(NOW + t, 100 <= t < 160) for t in range(200)]
    flow = Dataflow("alerts-test")
    stream = op.input("in", flow, TestingSource(batches))
    partials = op.flat_map("partials", stream, bank.partials)
    events = op.stateful("detect", partials, lambda resumed: DetectLogic({rule.name: rule}, resumed))
    out: list = []
    op.output("out", events, TestingSink(out))
    run_main(flow)
    assert [(name, e.kind, e.key) for name, (e, _) in out] == [(rule.name, "start", (_v4(VICTIM),)),
                                                                (rule.name, "end", (_v4(VICTIM),))]
