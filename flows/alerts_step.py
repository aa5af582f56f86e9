"""Detection as a Bytewax stateful operator (pure logic: the dataflow wiring is flows/outlet.py's).

Each worker turns its flow batches into small per-rule partials (`RuleBank.partials`: the
per-second, per-key totals of flows/detect.py, and the signature of keys hot enough to matter),
keyed by rule name; one `DetectLogic` per rule — on whichever worker owns that key — merges the
partials of every worker into the rule's Detector, so a key's traffic is counted once however
the flows were spread. Its state (the Detector, the last signatures) is snapshotted with the
dataflow: an alert on when the outlet stops is still on when it resumes, and does not fire again.

Time is the flows' own (TimeReceived): a second is evaluated once flows `LATENESS` seconds newer
have been seen; when no flows come at all, time moves on with the wall clock after `IDLE`
seconds, so an attack that stops dead still ends.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from bytewax.operators import StatefulLogic

from flows import detect
from flows.detect import Detector, Event, Rule, Totals

LATENESS = 2
IDLE = 5.0
AHEAD = 300  # flows stamped further in the future than this (by the clock) are not counted
BEHIND = 86_400  # nor flows older than this: a forged or broken timestamp must not move time
HOT_FRACTION = 0.25
MAX_HOT = 5
MAX_SIGNATURES = 1000


@dataclass
class Partial:
    rule: str
    totals: dict[tuple[int, tuple], Totals]
    signatures: dict[tuple, dict[str, list]]
    newest: int


def _hot(rule: Rule, totals: Totals) -> float:
    """How close one second of a key comes to the rule's threshold (1 = at it)."""
    if rule.measure == "distinct_src":
        return len(totals.sources) * rule.window / rule.threshold
    one_second = detect.measure(rule, totals, seconds=1)
    if rule.measure == "syn_ratio":
        return one_second / rule.threshold if totals.packets >= HOT_FRACTION * rule.min_pps else 0.0
    return one_second / rule.threshold


class RuleBank:
    """The rules, their filters compiled once (one per worker)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)
        self.expressions = [detect.arrow_filter(r.filter) for r in self.rules]

    def partials(self, batch: pa.RecordBatch) -> list[tuple[str, Partial]]:
        if not batch.num_rows:
            return []
        table = pa.Table.from_batches([batch])
        newest = int(pa.compute.max(table.column("TimeReceived")).cast(pa.int64()).as_py())
        out = []
        for rule, expression in zip(self.rules, self.expressions):
            chosen = detect.selected(rule, table, expression).combine_chunks()
            totals = detect.batch_totals(rule, chosen, filtered=True)
            hot = sorted(((_hot(rule, t), key) for (_, key), t in totals.items()), reverse=True)
            keys = list(dict.fromkeys(key for score, key in hot if score >= HOT_FRACTION))[:MAX_HOT]
            signatures = {key: detect.signature(rule, chosen, key, filtered=True) for key in keys}
            out.append((rule.name, Partial(rule.name, totals, signatures, newest)))
        return out


@dataclass
class DetectState:
    detector: Detector
    signatures: dict[tuple, dict[str, list]] = field(default_factory=dict)
    watermark: int | None = None  # the newest second seen


class DetectLogic(StatefulLogic):
    """One rule's detection (the rule is the key: Bytewax builds one logic per key, from its
    snapshot when it resumes). Emits (Event, signature) pairs."""

    def __init__(self, rules: dict[str, Rule], resumed: DetectState | None, clock: Any = time.time) -> None:
        self.rules = rules
        self.state = resumed
        if resumed is not None and resumed.detector.rule.name in rules:  # the rule as configured now
            resumed.detector.rule = rules[resumed.detector.rule.name]
        self._clock = clock
        self._last_item = clock()
        self.out_of_range = 0  # totals of seconds too far from the clock, dropped
        self._restate = resumed is not None  # alerts on at the snapshot: said again once, as "on"

    def on_item(self, value: Partial) -> tuple[list[tuple[Event, dict]], bool]:
        if self.state is None:
            self.state = DetectState(Detector(self.rules[value.rule]))
        state = self.state
        now = self._clock()
        totals = {k: t for k, t in value.totals.items() if now - BEHIND <= k[0] <= now + AHEAD}
        self.out_of_range += len(value.totals) - len(totals)
        detect.feed(state.detector, totals)
        for key, found in value.signatures.items():
            state.signatures.pop(key, None)
            state.signatures[key] = found
        while len(state.signatures) > MAX_SIGNATURES:
            state.signatures.pop(next(iter(state.signatures)))
        newest = max((second for second, _ in totals), default=value.newest)
        if not now - BEHIND <= newest <= now + AHEAD:  # (the batch's own newest may be forged too)
            return [], StatefulLogic.RETAIN
        state.watermark = max(state.watermark or newest, newest)
        self._last_item = self._clock()
        return self._advance(state.watermark - LATENESS + 1), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple[Event, dict]], bool]:
        idle = self._clock() - self._last_item
        if self.state is None or self.state.watermark is None or idle < IDLE:
            return [], StatefulLogic.RETAIN
        self.state.watermark += int(idle)
        self._last_item += int(idle)
        return self._advance(self.state.watermark - LATENESS + 1), StatefulLogic.RETAIN

    def _advance(self, until: int) -> list[tuple[Event, dict]]:
        restated: list[Event] = []
        if self._restate:
            self._restate = False
            name = self.state.detector.rule.name
            restated = [Event("on", name, key, state.since, None, state.value, state.peak)
                        for key, state in self.state.detector.states() if state.status == "active"]
            restated += [Event("ended", name, key, 0, state.last_over + 1, state.peak, state.peak)
                         for key, state in self.state.detector.states() if state.status == "cooldown"]
        events = restated + self.state.detector.advance(until)
        return [(event, self.state.signatures.get(event.key, {})) for event in events]

    def notify_at(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=1)

    def snapshot(self) -> DetectState | None:
        return copy.deepcopy(self.state)
