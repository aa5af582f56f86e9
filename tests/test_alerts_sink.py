"""Alert events leave through every channel: one row per alert in the store's `alerts` table
(the end replacing the start), `waxflow_alert_active{rule}`, and a webhook signed with the
shared secret that a real HTTP receiver gets even after refusing the first attempts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY

from connectors import clickhouse
from connectors.alerts import AlertSink
from flows import detect
from flows.settings import ClickHouse
from flows.settings.alerts import Alerts

SECRET = "webhook-s3cret"


class Receiver(BaseHTTPRequestHandler):
    failures_left = 2
    received: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.failures_left > 0:
            Receiver.failures_left -= 1
            self.send_response(500)
        else:
            Receiver.received.append((body, self.headers.get("X-Waxflow-Signature", "")))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_events_reach_the_store_the_metrics_and_a_signed_webhook(chdb_dir, receiver) -> None:
    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"alerts_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    client = clickhouse.connect(cfg)
    config = Alerts(enabled=True, defaults=False, webhook={"url": receiver, "secret": SECRET, "retries": 3},
                    rules=[{"name": "amp", "filter": "Proto = 17", "threshold": 1e6}])
    sink = AlertSink(config, cfg.database, client)
    key = (bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]),)
    found = {"sources": ["100.0.0.1"], "source_ports": [123], "protocols": [17]}
    before = REGISTRY.get_sample_value("waxflow_alert_active", {"rule": "amp"}) or 0
    sink.handle(detect.Event("start", "amp", key, 1_800_000_000, None, 2e6, 2e6), found, 0)
    assert REGISTRY.get_sample_value("waxflow_alert_active", {"rule": "amp"}) == before + 1
    sink.handle(detect.Event("end", "amp", key, 1_800_000_000, 1_800_000_060, 5e6, 5e6), found, 0)
    assert REGISTRY.get_sample_value("waxflow_alert_active", {"rule": "amp"}) == before
    rows = client.query(f"SELECT Rule, Key, toUInt32(Start), toUInt32(End), Peak, TopSourcePorts, Action "
                        f"FROM `{cfg.database}`.alerts FINAL").result_rows
    assert rows == [("amp", "203.0.113.7", 1_800_000_000, 1_800_000_060, 5e6, [123], "none")]
    assert sink.webhook.drain(60)
    assert len(Receiver.received) == 2  # (the first two attempts were refused: retried)
    for body, signature in Receiver.received:
        assert signature == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert [json.loads(body)["kind"] for body, _ in Receiver.received] == ["start", "end"]
    assert json.loads(Receiver.received[0][0])["top_source_ports"] == [123]
    client.command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


def test_the_api_lists_alerts_by_time_rule_and_state(chdb_dir) -> None:
    from connectors import http
    from flows.settings import API, Settings
    from tests.conftest import free_port
    from tests.test_api import get

    settings = Settings(clickhouse={"dsn": f"chdb:{chdb_dir}", "database": f"alertapi_{uuid.uuid4().hex[:8]}"},
                        kafka={"brokers": [f"127.0.0.1:{free_port()}"]}, api=API(listen=f"127.0.0.1:{free_port()}"))
    clickhouse.migrate(settings.clickhouse)
    client = clickhouse.connect(settings.clickhouse)
    sink = AlertSink(Alerts(defaults=False, rules=[{"name": "amp", "threshold": 1}, {"name": "syn", "threshold": 1}]),
                     settings.clickhouse.database, client)
    key = (bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]),)
    now = int(__import__("time").time())
    sink.handle(detect.Event("start", "amp", key, now - 600, None, 2, 2), {}, 0)
    sink.handle(detect.Event("end", "amp", key, now - 600, now - 300, 3, 3), {}, 0)
    sink.handle(detect.Event("start", "syn", key, now - 60, None, 1, 1), {}, 0)
    assert http.serve_outlet(settings)
    status, body = get(settings, "/api/v0/alerts", token=None)
    assert status == 200 and [(a["rule"], a["end"]) for a in body["alerts"]] == [("syn", None), ("amp", now - 300)]
    assert [a["rule"] for a in get(settings, "/api/v0/alerts", {"active": "1"}, token=None)[1]["alerts"]] == ["syn"]
    assert [a["rule"] for a in get(settings, "/api/v0/alerts", {"rule": "amp"}, token=None)[1]["alerts"]] == ["amp"]
    assert get(settings, "/api/v0/alerts", {"from": "-2m"}, token=None)[1]["alerts"][0]["rule"] == "syn"
    assert [a["rule"] for a in get(settings, "/api/v0/alerts", {"from": "-4m"}, token=None)[1]["alerts"]] == ["syn"]
    for params, reason in (({"active": "2"}, "bad_active"), ({"rule": "x" * 65}, "bad_rule"),
                           ({"sql": "1"}, "unknown_parameter"), ({"from": "nope"}, "bad_time")):
        status, body = get(settings, "/api/v0/alerts", params, token=None)
        assert (status, body["reason"]) == (400, reason)


def test_the_backtest_over_the_store_fires_what_the_live_path_fires(chdb_dir) -> None:
    import pyarrow as pa

    from connectors.alerts import backtest
    from tests.test_detect import NOW, VICTIM, _amplification, _live, _traffic

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"backtest_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    client = clickhouse.connect(cfg)
    batches = _traffic(range(100, 160))
    client.insert_arrow(f"{cfg.database}.flows", pa.Table.from_batches(batches))
    rule = _amplification()
    found = backtest(lambda sql, parameters: client.query(sql, parameters=parameters).result_rows, rule,
                     cfg.database, NOW, NOW + 400, chunk=50)
    live = _live(rule, batches)
    assert [(d["kind"], d["start"], d["end"], d["peak"]) for d in found] == \
        [(e.kind, e.start, e.end, e.peak) for e in live]
    assert found[0]["key"] == VICTIM and found[0]["top_source_ports"] == [123] and found[0]["top_protocols"] == [17]
    assert found[0]["top_sources"] == [f"100.{j}.0.1" for j in range(5)]
    client.command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
FILL = """
import sys
import pyarrow as pa
from connectors import clickhouse
from flows.settings import ClickHouse
from tests.test_detect import _second
cfg, now = ClickHouse(dsn="chdb:" + sys.argv[1]), int(sys.argv[2])
clickhouse.migrate(cfg)
batches = [_second(now + t, 100 <= t < 160) for t in range(200)]
clickhouse.connect(cfg).insert_arrow(cfg.database + ".flows", pa.Table.from_batches(batches))
"""


def test_waxflow_alerts_backtest_on_a_stopped_store(tmp_path) -> None:
    """`waxflow alerts backtest` straight on the store (nothing answers on api.listen): a
    configured rule fires once over an amplification in the store, not with a threshold too
    high, and an unknown rule is refused by name. (chDB allows one data directory per process:
    the store is built and read by child processes.)"""
    import subprocess
    import sys

    import yaml

    from tests.conftest import free_port
    from tests.test_detect import ATTACK_BPS, NOW, VICTIM

    store = tmp_path / "store"
    config = tmp_path / "dataflows.yaml"
    config.write_text(yaml.safe_dump({
        "clickhouse": {"dsn": f"chdb:{store}"}, "kafka": {"brokers": [f"127.0.0.1:{free_port()}"]},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "alerts": {"rules": [{"name": "amp", "filter": "Proto = 17 AND SrcPort = 123", "threshold": ATTACK_BPS / 2,
                              "window": "10s", "min_duration": "5s"}]}}))
    subprocess.run([sys.executable, "-c", FILL, str(store), str(NOW)], check=True, cwd=ROOT)

    def backtest(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "waxflow", "-c", str(config), "alerts", "backtest",
                               "--from", str(NOW - 10), "--to", str(NOW + 400), "--format", "jsonl", *extra],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    done = backtest("--rule", "amp")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["kind"], r["key"], r["start"]) for r in rows] == [("start", VICTIM, NOW + 104), ("end", VICTIM, NOW + 104)]
    assert "amp (threshold 1.12e+08): 1 alert(s)" in done.stderr, done.stderr
    high = backtest("--rule", "amp", "--threshold", "1e12")
    assert high.returncode == 0 and high.stdout.strip() == "" and "0 alert(s)" in high.stderr, high.stderr
    unknown = backtest("--rule", "nope")
    assert unknown.returncode == 1 and "unknown_rule" in unknown.stderr and "udp-amplification" in unknown.stderr


def test_a_backtest_through_the_api_is_bounded_in_time(chdb_dir) -> None:
    from connectors.alerts import BacktestTooLong, backtest
    from tests.test_detect import NOW, _amplification

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"budget_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    client = clickhouse.connect(cfg)
    run = lambda sql, parameters: client.query(sql, parameters=parameters).result_rows  # noqa: E731
    assert backtest(run, _amplification(), cfg.database, NOW, NOW + 7200, budget=60) == []
    with pytest.raises(BacktestTooLong, match="shorter range"):
        backtest(run, _amplification(), cfg.database, NOW, NOW + 7 * 86400, budget=0)
    client.command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


def test_an_alert_restated_after_a_restart_takes_its_route_back_in_hand(chdb_dir) -> None:
    """A new process knows nothing of the routes the killed one announced: the alert's "on"
    takes its route back (announced again), so that its end withdraws it."""
    from connectors.bgp import GoBGP

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"restate_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    client = clickhouse.connect(cfg)
    config = Alerts(defaults=False, rules=[{"name": "amp", "threshold": 1,
                                            "mitigation": {"kind": "rtbh", "hold_down": "0s"}}])
    sent = []
    dry = GoBGP(dry_run=True)
    dry.send = lambda verb, route: sent.append((verb, route.prefix))  # (what it would send)
    sink = AlertSink(config, cfg.database, client, gobgp=dry)
    key = (bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]),)
    sink.handle(detect.Event("on", "amp", key, 1_800_000_000, None, 2, 2), {}, 0)
    sink.handle(detect.Event("end", "amp", key, 1_800_000_000, 1_800_000_060, 3, 3), {}, 10)
    sink.tick(11)
    assert sent == [("announce", "203.0.113.7/32"), ("withdraw", "203.0.113.7/32")]
    rows = client.query(f"SELECT count() FROM `{cfg.database}`.alerts").result_rows
    assert rows == [(1,)]  # the "on" stored nothing; the end did
    client.command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


def test_an_alert_that_ended_before_a_restart_still_has_its_route_withdrawn(chdb_dir) -> None:
    """Restated as "ended": withdrawn at once when its hold-down has passed, else when it does."""
    from connectors.bgp import GoBGP

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"ended_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    config = Alerts(defaults=False, rules=[{"name": "amp", "threshold": 1,
                                            "mitigation": {"kind": "rtbh", "hold_down": "60s"}}])
    sent = []
    dry = GoBGP(dry_run=True)
    dry.send = lambda verb, route: sent.append((verb, route.prefix))
    sink = AlertSink(config, cfg.database, clickhouse.connect(cfg), gobgp=dry)
    old, held = ((bytes(10) + b"\xff\xff" + bytes([203, 0, 113, i]),) for i in (7, 8))
    sink.handle(detect.Event("ended", "amp", old, 0, 1000, 1, 1), {}, 1100)   # hold-down over at 1060
    sink.handle(detect.Event("ended", "amp", held, 0, 1080, 1, 1), {}, 1100)  # held down until 1140
    assert sent == [("withdraw", "203.0.113.7/32"), ("announce", "203.0.113.8/32")]
    sink.tick(1139)
    assert len(sent) == 2
    sink.tick(1141)
    assert sent[-1] == ("withdraw", "203.0.113.8/32")
