"""Detection rules (flows/detect.py): the per-key state machine fires and clears at the seconds
its definition says, and the backtest's totals read from the store fire exactly the events the
live path makes from the same flows' batches (one implementation, two sources)."""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pytest

from connectors import clickhouse
from flows import detect, schema
from flows.columns import QueryError
from flows.detect import Detector, batch_totals, feed, make_rule, rows_totals, totals_sql

NOW = int(time.time()) - 3600  # (recent: raw flows' TTL keeps them)
VICTIM = "203.0.113.7"
AMPLIFIERS = "Proto = 17 AND SrcPort IN (53, 123, 389, 1900, 11211)"


def _v4(text: str) -> bytes:
    return bytes(10) + b"\xff\xff" + bytes(int(x) for x in text.split("."))


def _second(t: int, attack: bool, victims: list[str] | None = None, syn: bool = False) -> pa.RecordBatch:
    """One second of flows: 20 ordinary ones to 198.51.100.0/24, and the attack's if on."""
    rows = [dict(TimeReceived=t, SrcAddr=_v4(f"10.0.{i}.1"), DstAddr=_v4(f"198.51.100.{i}"), Proto=6, SrcPort=443,
                 DstPort=50000 + i, TCPFlags=0x18, Bytes=1500 * 10, Packets=10, SamplingRate=100) for i in range(20)]
    if attack:
        for i, victim in enumerate(victims or [VICTIM]):
            for j in range(5):
                if syn:
                    rows.append(dict(TimeReceived=t, SrcAddr=_v4(f"100.{j}.{i}.{t % 250}"), DstAddr=_v4(victim),
                                     Proto=6, SrcPort=40000 + j, DstPort=443, TCPFlags=0x02, Bytes=60 * 50,
                                     Packets=50, SamplingRate=100))
                else:
                    rows.append(dict(TimeReceived=t, SrcAddr=_v4(f"100.{j}.{i}.1"), DstAddr=_v4(victim), Proto=17,
                                     SrcPort=123, DstPort=80, TCPFlags=0, Bytes=1400 * 40, Packets=40, SamplingRate=100))
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    return schema.make_batch(columns, len(rows))


def _traffic(attack: range, seconds: int = 260, **kind) -> list[pa.RecordBatch]:
    return [_second(NOW + t, t in attack, **kind) for t in range(seconds)]


def _live(rule, batches) -> list[detect.Event]:
    """The live path: each second's batch aggregated and fed, the clock one second behind."""
    detector, expression = Detector(rule), detect.arrow_filter(rule.filter)
    events = []
    for batch in batches:
        feed(detector, batch_totals(rule, batch, expression))
        events += detector.advance(int(batch.column("TimeReceived").cast(pa.int64())[0].as_py()))
    return events + detector.advance(NOW + 10_000)


ATTACK_BPS = 5 * 1400 * 40 * 100 * 8  # 5 amplifiers' flows a second at 1:100 sampling


def _amplification(**rest):
    return make_rule("udp-amplification", AMPLIFIERS, "DstAddr", "bps", window=10,
                     threshold=ATTACK_BPS / 2, min_duration=5, cooldown=60, **rest)


def test_an_amplification_attack_fires_after_its_minimum_duration_and_ends_a_window_after() -> None:
    events = _live(_amplification(), _traffic(range(100, 160)))
    assert [(e.kind, e.key, e.start - NOW, None if e.end is None else e.end - NOW) for e in events] == [
        ("start", (_v4(VICTIM),), 104, None),  # half the attack's rate in the window from its 5th second
        ("end", (_v4(VICTIM),), 104, 165),     # under half again from 165; said a window later
    ]
    assert events[0].value == pytest.approx(ATTACK_BPS * 0.9)  # fired at 108: 9 attack seconds in the window
    assert events[1].peak == pytest.approx(ATTACK_BPS)


def test_a_key_in_cooldown_does_not_fire_again_until_it_passes() -> None:
    def bursts(*spans):
        return [_second(NOW + t, any(t in span for span in spans)) for t in range(320)]
    # the first ends at 125 (under half the rate from then): cooldown until 185
    assert [e.kind for e in _live(_amplification(), bursts(range(100, 120), range(150, 180)))] == ["start", "end"]
    twice = _live(_amplification(), bursts(range(100, 120), range(250, 280)))
    assert [(e.kind, e.start - NOW) for e in twice] == [("start", 104), ("end", 104), ("start", 254), ("end", 254)]


def test_carpet_bombing_is_one_key_for_its_prefix() -> None:
    victims = [f"203.0.113.{i}" for i in range(1, 41)]  # 40 addresses, each under the threshold
    rule = make_rule("carpet", AMPLIFIERS, "DstAddr/24", "bps", window=10, threshold=ATTACK_BPS * 10, min_duration=3)
    events = _live(rule, _traffic(range(50, 90), seconds=150, victims=victims))
    assert [(e.kind, e.key) for e in events] == [("start", (_v4("203.0.113.0"),)), ("end", (_v4("203.0.113.0"),))]
    per_address = make_rule("per-address", AMPLIFIERS, "DstAddr", "bps", window=10, threshold=ATTACK_BPS * 10)
    assert _live(per_address, _traffic(range(50, 90), seconds=150, victims=victims)) == []


def test_syn_ratio_and_distinct_sources() -> None:
    ratio = make_rule("syn", "Proto = 6", "DstAddr", "syn_ratio", window=5, threshold=0.9, min_duration=2)
    events = _live(ratio, _traffic(range(30, 60), seconds=100, syn=True))
    assert [(e.kind, e.key) for e in events] == [("start", (_v4(VICTIM),)), ("end", (_v4(VICTIM),))]
    floor = make_rule("syn", "Proto = 6", "DstAddr", "syn_ratio", window=5, threshold=0.9, min_pps=1e6)
    assert _live(floor, _traffic(range(30, 60), seconds=100, syn=True)) == []  # 25,000 pps: under the floor
    sources = make_rule("sources", "Proto = 6", "DstAddr", "distinct_src", window=10, threshold=40)
    events = _live(sources, _traffic(range(30, 60), seconds=100, syn=True))
    assert events[0].kind == "start" and events[0].start - NOW == 37  # 5 new sources a second: 40 in 8 s


def test_keys_are_bounded_and_the_quiet_ones_go_first() -> None:
    rule = make_rule("small", "", "DstAddr", "pps", window=10, threshold=50_000, max_keys=5)  # (1,000 pps a key)
    detector = Detector(rule)
    feed(detector, batch_totals(rule, _second(NOW, False)))
    detector.advance(NOW + 1)
    assert len(detector._keys) <= 5 and detector.evicted >= 15


@pytest.fixture(scope="module")
def store(chdb_dir):
    from flows.settings import ClickHouse

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"detect_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    yield cfg
    clickhouse.connect(cfg).command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


@pytest.mark.parametrize("rule, traffic", [
    (_amplification(), {"attack": range(100, 160)}),
    (make_rule("carpet", AMPLIFIERS, "DstAddr/24", "bps", window=10, threshold=ATTACK_BPS * 10, min_duration=3),
     {"attack": range(50, 90), "victims": [f"203.0.113.{i}" for i in range(1, 41)]}),
    (make_rule("syn", "Proto = 6", "DstAddr+InIfBoundary", "syn_ratio", window=5, threshold=0.9, min_duration=2),
     {"attack": range(30, 60), "syn": True}),
    (make_rule("sources", "Proto = 6", "DstAddr", "distinct_src", window=10, threshold=40),
     {"attack": range(30, 60), "syn": True}),
])
def test_the_backtest_fires_what_the_live_path_fires(store, rule, traffic) -> None:
    batches = _traffic(traffic.pop("attack"), **traffic)
    client = clickhouse.connect(store)
    client.command(f"TRUNCATE TABLE `{store.database}`.flows")
    client.insert_arrow(f"{store.database}.flows", pa.Table.from_batches(batches))
    sql, parameters = totals_sql(rule, store.database, NOW, NOW + 1000)
    detector = Detector(rule)
    feed(detector, rows_totals(rule, client.query(sql, parameters=parameters).result_rows))
    replayed = detector.advance(NOW + 10_000)
    live = _live(rule, batches)
    assert live and replayed == live


def test_bad_rules_are_refused_naming_what_is_wrong() -> None:
    for key in ("Nope", "SrcAS/24", "DstAddr/33", "DstAddr/24/129", "DstAddr+DstAddr", "", "DstAddr/x"):
        with pytest.raises(QueryError) as refused:
            make_rule("r", "", key, "bps", window=10, threshold=1)
        assert refused.value.reason == "bad_key", key
    with pytest.raises(QueryError):
        make_rule("r", "SrcAS =", "DstAddr", "bps", window=10, threshold=1)
    with pytest.raises(QueryError):
        make_rule("r", "", "DstAddr", "furlongs", window=10, threshold=1)


def test_the_alerts_section_validates_naming_the_key_and_ships_defaults() -> None:
    from pydantic import ValidationError

    from flows.settings.alerts import DEFAULT_RULES, Alerts

    shipped = Alerts().all_rules()
    assert [r.name for r in shipped] == [d["name"] for d in DEFAULT_RULES] and len(shipped) == 8
    assert all(r.rule().window == 10 for r in shipped)
    mine = Alerts(rules=[{"name": "syn-flood", "filter": "Proto = 6", "measure": "syn_ratio", "threshold": 0.5}])
    assert [r.threshold for r in mine.all_rules() if r.name == "syn-flood"] == [0.5]
    for bad, where in [({"name": "x", "threshold": 1, "key": "Nope"}, "unknown column"),
                       ({"name": "x", "threshold": 1, "filter": "SrcAS ="}, "ends too soon"),
                       ({"name": "x", "threshold": 1, "measure": "furlongs"}, "measure is one of"),
                       ({"name": "Bad Name", "threshold": 1}, "name"),
                       ({"name": "x", "threshold": 1, "mitigation": {"kind": "flowspec", "action": "rate-limit"}},
                        "rate above 0")]:
        with pytest.raises(ValidationError) as refused:
            Alerts(rules=[bad])
        assert where in str(refused.value) and "rules.0" in str(refused.value), str(refused.value)
    with pytest.raises(ValidationError):
        Alerts(rules=[{"name": "x", "threshold": 1}, {"name": "x", "threshold": 2}])


def test_an_alert_names_its_key_and_the_attack_signature() -> None:
    rule = _amplification()
    table = pa.Table.from_batches(_traffic(range(0, 5), seconds=5))
    key = (_v4(VICTIM),)
    found = detect.signature(rule, table, key)
    assert found["protocols"] == [17] and found["source_ports"] == [123]
    assert found["sources"] == [f"100.{j}.0.1" for j in range(5)]
    assert detect.key_text(rule, key) == VICTIM
    carpet = make_rule("carpet", AMPLIFIERS, "DstAddr/24+InIfBoundary", "bps", window=10, threshold=1)
    assert detect.key_text(carpet, (_v4("203.0.113.0"), 1)) == "203.0.113.0/24+external"
    assert detect.signature(carpet, table, (_v4("203.0.113.0"), 0))["protocols"] == [17]


def test_hostile_counters_and_timestamps_cost_little_and_move_nothing() -> None:
    """A forged 2^64-1 byte count is a huge number, not a crash; flows stamped far from the
    clock are dropped (counted) instead of dragging time years ahead; a gap of days is jumped."""
    import time as clock

    from flows.alerts_step import DetectLogic, RuleBank
    from tests.test_alerts_step import Clock

    rule = _amplification()
    forged = _second(NOW, True)
    columns = {name: forged.column(name) for name in forged.schema.names}
    columns["Bytes"] = pa.array([2**64 - 1] * forged.num_rows, pa.uint64())
    huge = pa.RecordBatch.from_pydict(columns, schema=forged.schema)
    assert max(t.bits for t in batch_totals(rule, huge).values()) > 1e20
    wall = Clock()
    wall.now = NOW + 100
    logic = DetectLogic({rule.name: rule}, None, wall)
    bank = RuleBank([rule])
    for future in (_second(NOW + 10**9, True), _second(0, True)):
        for _, partial in bank.partials(future):
            assert logic.on_item(partial)[0] == []
    assert logic.out_of_range > 0 and logic.state.watermark is None
    detector = Detector(rule)
    feed(detector, batch_totals(rule, _second(NOW, False)))
    feed(detector, batch_totals(rule, _second(NOW + 30 * 86400, True)))
    started = clock.monotonic()
    detector.advance(NOW + 30 * 86400 + 1)
    assert clock.monotonic() - started < 1.0 and detector.clock == NOW + 30 * 86400 + 1
