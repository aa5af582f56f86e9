"""The metadata step (flows/enrich/metadata.py) with the real SNMP poller against a real snmpd:
held flows come out with exactly the agent's names and speeds; static metadata wins; expiry,
refresh, query_timeout and the breaker run on an injected clock, not sleeps."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest

from connectors import snmp
from flows import schema
from flows.enrich import metadata
from flows.enrich.metadata import Metadata, MetadataLogic
from flows.envelope import address_bytes
from flows.settings import SNMP, SNMPCredentials, StaticExporter
from tests.snmpd import COMMUNITY, SYS_NAME, SnmpAgent
from tests.test_snmp import EXPECTED, counter

EXPORTER = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def flows(pairs: list[tuple[int, int]], exporter: str = EXPORTER) -> pa.RecordBatch:
    n = len(pairs)
    return schema.make_batch({"ExporterAddress": [address_bytes(exporter)] * n,
                              "InIfIndex": [p[0] for p in pairs], "OutIfIndex": [p[1] for p in pairs],
                              "Bytes": list(range(1, n + 1))}, n)


def described(item: metadata.Described) -> list[tuple]:
    """(exporter name, in name/description/speed, out name/description/speed) per row of a
    batch out of the metadata step."""
    batch = item.batch
    columns = ["ExporterName", "InIfName", "InIfDescription", "InIfSpeed",
               "OutIfName", "OutIfDescription", "OutIfSpeed"]
    return list(zip(*(batch.column(c).to_pylist() for c in columns)))


def row(exporter: str, in_if: metadata.Interface, out_if: metadata.Interface) -> tuple:
    return (exporter, in_if.name, in_if.description, in_if.speed,
            out_if.name, out_if.description, out_if.speed)


NONE = metadata.Interface()


def settle(logic: MetadataLogic, timeout: float = 10) -> list[pa.RecordBatch]:
    """Activate the step like Bytewax would until the answers it waits for are in."""
    out, deadline = [], time.monotonic() + timeout
    while logic.requests and time.monotonic() < deadline:
        out += logic.on_notify()[0]
        time.sleep(0.01)
    out += logic.on_notify()[0]
    return [b for b in out if b is not None]


@pytest.fixture
def make(snmp_agent: SnmpAgent) -> Iterator:
    pollers = []

    def build(static: dict | None = None, state=None, clock: Clock | None = None, store=None,
              **overrides) -> MetadataLogic:
        settings = dict(enabled=True, timeout="300ms", retries=0, query_timeout="5s",
                        breaker_failures=2, breaker_duration="1m", cache_duration="30m",
                        cache_refresh="1h", cache_check_interval="2m",
                        credentials=[SNMPCredentials(subnet="127.0.0.0/8", port=snmp_agent.port,
                                                     communities=[COMMUNITY])])
        settings.update(overrides)
        cfg = SNMP(**settings)
        pollers.append(snmp.SNMPPoller(cfg))
        shared = Metadata(cfg, {k: StaticExporter(**v) for k, v in (static or {}).items()},
                          pollers[-1], clock or Clock(), store)
        return MetadataLogic(shared, state)

    yield build
    for poller in pollers:
        poller.close()


def test_held_flows_come_out_with_the_agents_names(make) -> None:
    logic = make()
    held, requests = counter(metadata.HELD), counter(snmp.REQUESTS)
    answered = counter(metadata.RELEASED, "answered")
    first = flows([(1, 4242), (4343, 999), (0, 1)])
    second = flows([(4242, 1)])
    out, _ = logic.on_batch([first, second])
    assert out == []  # both wait: nothing is cached yet
    assert counter(metadata.HELD) == held + 4

    out = settle(logic)
    assert counter(snmp.REQUESTS) == requests + 1  # the second batch joined the first's request
    assert counter(metadata.RELEASED, "answered") == answered + 4
    assert [described(b) for b in out] == [
        [row(SYS_NAME, EXPECTED[1], EXPECTED[4242]), row(SYS_NAME, EXPECTED[4343], EXPECTED[999]),
         row(SYS_NAME, NONE, EXPECTED[1])],
        [row(SYS_NAME, EXPECTED[4242], EXPECTED[1])]]

    # Now cached: the next batch goes through at once, with a tick passed on after it.
    hits = counter(metadata.HITS)
    out, _ = logic.on_batch([flows([(1, 4343)]), None])
    assert [described(b) for b in out if b is not None] == [[row(SYS_NAME, EXPECTED[1], EXPECTED[4343])]]
    assert out[-1] is None
    assert counter(metadata.HITS) == hits + 3  # sysName, 1, 4343
    assert counter(snmp.REQUESTS) == requests + 1


def test_static_metadata_wins_over_snmp(make) -> None:
    logic = make(static={"127.0.0.0/24": {"name": "static-edge", "interfaces": {
        4242: {"name": "et-0/0/0", "description": "IX: DE-CIX", "speed": 400000}}}})
    logic.on_batch([flows([(4242, 1)])])
    [out] = settle(logic)
    assert described(out) == [row("static-edge", metadata.Interface("et-0/0/0", "IX: DE-CIX", 400000),
                                  EXPECTED[1])]


def test_static_only_without_snmp() -> None:
    shared = Metadata(SNMP(enabled=False), {"192.0.2.0/24": StaticExporter(
        name="lab-router", interfaces={7: {"name": "ge-0/0/7", "speed": 1000}})}, None, Clock())
    logic = MetadataLogic(shared, None)
    # One batch may hold several exporters (sFlow agents behind one sender).
    mixed = schema.concat_batches([flows([(7, 8)], "192.0.2.9"), flows([(7, 8)], "198.51.100.1"),
                                   flows([(8, 7)], "192.0.2.9")])
    [out], _ = logic.on_batch([mixed])
    assert described(out) == [row("lab-router", metadata.Interface("ge-0/0/7", "", 1000), NONE),
                              row("", NONE, NONE),  # the Enricher names it by its address
                              row("lab-router", NONE, metadata.Interface("ge-0/0/7", "", 1000))]


def test_expiry_and_refresh_follow_the_clock(make, snmp_agent: SnmpAgent) -> None:
    clock = Clock()
    logic = make(clock=clock)
    logic.on_batch([flows([(1, 4242), (4343, 4343)])])
    settle(logic)
    entries = counter(metadata.CACHE_SIZE)

    # 20 minutes on, only 1 and 4242 are used again; at 40 minutes 4343 has been unused 40 min.
    clock.advance(20 * 60)
    logic.on_batch([flows([(1, 4242)])])
    expired = counter(metadata.EXPIRED)
    clock.advance(20 * 60)
    logic.on_notify()
    assert counter(metadata.EXPIRED) == expired + 1
    assert counter(metadata.CACHE_SIZE) == entries - 1
    assert set(logic.state.exporters[address_bytes(EXPORTER)].entries) == {0, 1, 4242}

    # The agent now says something else; past cache_refresh the used entries are polled again.
    snmp_agent.stop()
    snmp_agent.workdir.joinpath("snmpd.conf").write_text(
        snmp_agent.workdir.joinpath("snmpd.conf").read_text().replace("PNI: Netflix", "PNI: Netflix 2"))
    snmp_agent.start()
    logic.on_batch([flows([(1, 4242)])])
    refreshes, requests = counter(metadata.REFRESHES), counter(snmp.REQUESTS)
    clock.advance(25 * 60)  # 65 min after the first answer
    out, _ = logic.on_notify()
    assert out == []
    assert counter(metadata.REFRESHES) == refreshes + 3
    settle(logic)
    assert counter(snmp.REQUESTS) == requests + 1
    out, _ = logic.on_batch([flows([(4242, 0)])])  # not held: refreshing does not stop flows
    assert described(out[0])[0][2] == "PNI: Netflix 2"


def test_agent_stops_breaker_opens_flows_keep_flowing(make, snmp_agent: SnmpAgent) -> None:
    clock = Clock()
    logic = make(clock=clock)
    logic.on_batch([flows([(1, 4242)])])
    settle(logic)

    snmp_agent.stop()
    opens, failed = counter(metadata.BREAKER_OPENS), counter(metadata.RELEASED, "failed")
    timeouts = counter(snmp.ERRORS, "timeout")
    for attempt in range(2):  # breaker_failures: 2
        out, _ = logic.on_batch([flows([(1, 4343 + attempt)])])
        assert out == []  # held for the unknown interface...
        [out] = settle(logic)  # ...then released with what is known when the poll fails
        assert described(out) == [row(SYS_NAME, EXPECTED[1], NONE)]
    assert counter(snmp.ERRORS, "timeout") == timeouts + 2
    assert counter(metadata.BREAKER_OPENS) == opens + 1
    assert counter(metadata.RELEASED, "failed") == failed + 2

    # Open breaker: no polls, no holding; cached names still applied.
    requests = counter(snmp.REQUESTS)
    out, _ = logic.on_batch([flows([(4242, 5000)])])
    assert described(out[0]) == [row(SYS_NAME, EXPECTED[4242], NONE)]
    assert counter(snmp.REQUESTS) == requests and not logic.requests

    # After breaker_duration the agent is asked again (it is back by then).
    snmp_agent.start()
    clock.advance(61)
    assert logic.on_batch([flows([(4343, 0)])])[0] == []
    [out] = settle(logic)
    assert described(out) == [row(SYS_NAME, EXPECTED[4343], NONE)]


def test_query_timeout_releases_what_is_known(make, snmp_agent: SnmpAgent) -> None:
    clock = Clock()
    logic = make(clock=clock, timeout="3s", query_timeout="2s")
    snmp_agent.stop()
    timed_out = counter(metadata.RELEASED, "timeout")
    assert logic.on_batch([flows([(1, 2)])])[0] == []
    clock.advance(1)
    assert logic.on_notify()[0] == []
    clock.advance(1.5)  # past query_timeout, the poll is still waiting for its answer
    [out], _ = logic.on_notify()
    assert described(out) == [row("", NONE, NONE)]
    assert counter(metadata.RELEASED, "timeout") == timed_out + 1


def test_snapshot_keeps_cache_and_held_flows(make) -> None:
    logic = make()
    logic.on_batch([flows([(1, 4242)])])
    settle(logic)
    logic.on_batch([flows([(4343, 1)])])  # held at snapshot time
    state = pickle.loads(pickle.dumps(logic.snapshot()))
    settle(logic)

    requests = counter(snmp.REQUESTS)
    resumed = make(state=state)
    assert resumed.requests  # the held batch's question is asked again
    [out] = settle(resumed)
    assert described(out) == [row(SYS_NAME, EXPECTED[4343], EXPECTED[1])]
    out, _ = resumed.on_batch([flows([(4242, 1)])])  # the rest came from the snapshot
    assert described(out[0]) == [row(SYS_NAME, EXPECTED[4242], EXPECTED[1])]
    assert counter(snmp.REQUESTS) == requests + 1


def test_idle_key_is_discarded(make) -> None:
    clock = Clock()
    logic = make(clock=clock)
    logic.on_batch([flows([(1, 0)])])
    settle(logic)
    clock.advance(10 * 60)
    assert logic.on_notify()[1] is False
    entries = counter(metadata.CACHE_SIZE)
    clock.advance(21 * 60)
    assert logic.on_notify()[1] is True  # the check dropped every entry: Bytewax forgets the key
    assert counter(metadata.CACHE_SIZE) == entries - 2


def test_cache_file_carries_the_cache_to_a_fresh_start(make, snmp_agent: SnmpAgent,
                                                       tmp_path) -> None:
    clock = Clock()
    store = snmp.CacheFile(tmp_path / "snmp-cache")
    logic = make(clock=clock, store=store)
    logic.on_batch([flows([(1, 4242)])])
    settle(logic)
    clock.advance(2 * 60)  # cache_check_interval: the check publishes and writes the file
    logic.on_notify()
    assert store.path.exists()

    # A new process without recovery state, the agent gone: the file answers, nothing waits.
    snmp_agent.stop()
    requests = counter(snmp.REQUESTS)
    fresh = make(clock=clock, store=snmp.CacheFile(tmp_path / "snmp-cache"))
    out, _ = fresh.on_batch([flows([(4242, 1)])])
    assert described(out[0]) == [row(SYS_NAME, EXPECTED[4242], EXPECTED[1])]
    assert counter(snmp.REQUESTS) == requests and not fresh.requests


class _Exploit:
    """Unpickling this creates `marker`: what a pickled cache file would let its writer do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def _ignored(path, errors_before: float) -> bool:
    return (snmp.CacheFile(path).load() == {}
            and counter(snmp.CACHE_FILE_ERRORS, "load") == errors_before + 1)


def test_cache_file_round_trips_as_versioned_json(tmp_path) -> None:
    cache = metadata.ExporterCache(failures=1, open_until=5.0)
    cache.store(metadata.PollResult("edge-1", {7: metadata.Interface("xe-0/0/7", "to core", 10_000)}),
                [metadata.SYSTEM, 7], 1_700_000_000.0)
    store = snmp.CacheFile(tmp_path / "snmp-cache")
    store.save({address_bytes("2001:db8::1"): cache.to_plain()})
    document = json.loads(store.path.read_text())
    assert document["version"] == snmp.CACHE_FILE_VERSION
    assert snmp.CacheFile(tmp_path / "snmp-cache").load() == {address_bytes("2001:db8::1"): cache}


def test_unreadable_cache_file_starts_empty(tmp_path) -> None:
    path = tmp_path / "snmp-cache"
    (tmp_path / "snmp-cache.0").write_bytes(b"not json")
    assert _ignored(path, counter(snmp.CACHE_FILE_ERRORS, "load"))


def test_pickled_cache_file_is_not_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "snmp-cache.0").write_bytes(pickle.dumps({b"x": _Exploit(marker)}))
    assert _ignored(tmp_path / "snmp-cache", counter(snmp.CACHE_FILE_ERRORS, "load"))
    assert not marker.exists()


def test_truncated_or_foreign_cache_file_is_ignored(tmp_path) -> None:
    store = snmp.CacheFile(tmp_path / "snmp-cache")
    cache = metadata.ExporterCache()
    cache.store(metadata.PollResult("edge-1", {}), [metadata.SYSTEM], 1.0)
    store.save({address_bytes(EXPORTER): cache.to_plain()})
    whole = store.path.read_bytes()
    store.path.write_bytes(whole[:len(whole) // 2])
    assert _ignored(tmp_path / "snmp-cache", counter(snmp.CACHE_FILE_ERRORS, "load"))
    document = json.loads(whole)
    for foreign in ({**document, "version": 2},
                    {**document, "exporters": {"00": document["exporters"][address_bytes(EXPORTER).hex()]}},
                    {**document, "exporters": {address_bytes(EXPORTER).hex(): {"entries": [[0, 1, 1.0, 1.0]]}}},
                    {**document, "exporters": {address_bytes(EXPORTER).hex(): {"entries": [[-1, "x", 1.0, 1.0]]}}},
                    [document]):
        store.path.write_text(json.dumps(foreign))
        assert _ignored(tmp_path / "snmp-cache", counter(snmp.CACHE_FILE_ERRORS, "load")), foreign
