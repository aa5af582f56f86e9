"""Mitigation through a real GoBGP: an alert's RTBH and FlowSpec routes reach a BGP peer's RIB
(two Debian gobgpd on loopback), are withdrawn after the hold-down, a rule never has more than
its limit up at once, and a dry run sends nothing."""

from __future__ import annotations

import time

import pytest

from connectors.bgp import BGPError, GoBGP
from flows.mitigation import Mitigator, Policy, destination, gobgp_args
from tests import gobgp

pytestmark = pytest.mark.skipif(not (gobgp.GOBGPD and gobgp.GOBGP),
                                reason="needs Debian's gobgpd (scripts/apt-packages.txt)")


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    yield from gobgp.running_pair(tmp_path_factory.mktemp("gobgp"))


def _wait(check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _send(client: GoBGP, actions) -> None:
    for verb, route in actions:
        client.send(verb, route)


def test_rtbh_routes_reach_the_peer_with_the_blackhole_community_and_are_withdrawn(speakers) -> None:
    ours, peer = speakers
    client = GoBGP(port=ours.api_port, dry_run=False)
    mitigator = Mitigator(Policy(kind="rtbh", dry_run=False, next_hop="192.0.2.1", hold_down=2))
    v4 = destination(bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]))
    v6 = destination(bytes.fromhex("20010db8000000000000000000000001"))
    assert (v4, v6) == ("203.0.113.7/32", "2001:db8::1/128")
    _send(client, mitigator.start(v4) + mitigator.start(v6))
    _wait(lambda: "203.0.113.7/32" in peer.rib("ipv4") and "2001:db8::1/128" in peer.rib("ipv6"), "the RTBH routes")
    attrs = peer.rib("ipv4")["203.0.113.7/32"][0]["attrs"]
    communities = [a for a in attrs if a.get("type") == 8][0]["communities"]
    assert communities == [0xFFFF029A]  # 65535:666, BLACKHOLE (RFC 7999)
    now = time.time()
    mitigator.end(v4, now)
    mitigator.end(v6, now)
    assert mitigator.due(now + 1) == []  # held down
    _send(client, mitigator.due(now + 2))
    _wait(lambda: not peer.rib("ipv4") and not peer.rib("ipv6"), "the withdrawals")


def test_flowspec_matches_the_attack_and_discards_or_rate_limits_it(speakers) -> None:
    ours, peer = speakers
    client = GoBGP(port=ours.api_port, dry_run=False)
    discard = Mitigator(Policy(kind="flowspec", dry_run=False, protocol=17, source_ports=(53, 123), hold_down=0))
    limit = Mitigator(Policy(kind="flowspec", dry_run=False, protocol=17, action="rate-limit", rate=125_000,
                             hold_down=0))
    _send(client, discard.start("203.0.113.7/32") + limit.start("2001:db8::/64"))
    _wait(lambda: peer.rib("ipv4-flowspec") and peer.rib("ipv6-flowspec"), "the FlowSpec routes")
    (name, paths), = peer.rib("ipv4-flowspec").items()
    assert name == "[destination: 203.0.113.7/32][protocol: ==udp][source-port: ==53 ==123]"
    extended = [a for a in paths[0]["attrs"] if a.get("type") == 16][0]["value"][0]
    assert extended["subtype"] == 6 and extended["rate"] == 0  # traffic-rate 0: discard (RFC 8955 7.3)
    (name6, paths6), = peer.rib("ipv6-flowspec").items()
    assert "2001:db8::/64" in name6 and "==udp" in name6
    assert [a for a in paths6[0]["attrs"] if a.get("type") == 16][0]["value"][0]["rate"] == 125_000
    now = time.time()
    for mitigator in (discard, limit):
        mitigator.end(next(iter(mitigator.up)), now)
        _send(client, mitigator.due(now))
    _wait(lambda: not peer.rib("ipv4-flowspec") and not peer.rib("ipv6-flowspec"), "the withdrawals")


def test_a_rule_keeps_to_its_limit_and_a_dry_run_sends_nothing(speakers) -> None:
    ours, peer = speakers
    capped = Mitigator(Policy(kind="rtbh", max_announcements=2))
    sent = [capped.start(f"198.51.100.{i}/32") for i in range(4)]
    assert [len(s) for s in sent] == [1, 1, 0, 0] and capped.refused == 2
    assert capped.start("198.51.100.0/32") == []  # (already up: not twice)
    dry = GoBGP(port=ours.api_port, dry_run=True)
    _send(dry, [a for s in sent for a in s])
    time.sleep(1)
    assert peer.rib("ipv4") == {} and ours.rib("ipv4") == {}
    with pytest.raises(BGPError):
        GoBGP(port=1, dry_run=False, timeout=3).send("announce", sent[0][0][1])  # nothing listens: an error


def test_flowspec_without_a_match_takes_the_attack_signature() -> None:
    open_policy = Mitigator(Policy(kind="flowspec"))
    (_, route), = open_policy.start("203.0.113.7/32", {"protocols": [17, 6], "source_ports": [123, 53, 0]})
    assert (route.policy.protocol, route.policy.source_ports) == (17, (123, 53))
    (_, icmp), = Mitigator(Policy(kind="flowspec")).start("203.0.113.8/32", {"protocols": [1], "source_ports": [0]})
    assert (icmp.policy.protocol, icmp.policy.source_ports) == (1, ())
    open_policy.end("203.0.113.7/32", 0)
    assert open_policy.due(1e9) == [("withdraw", route)]  # the same route as announced


def test_command_lines_and_policies() -> None:
    policy = Policy(kind="flowspec", protocol=6, source_ports=(80,), action="rate-limit", rate=1000)
    route = Mitigator(policy).start("192.0.2.0/24")[0][1]
    assert gobgp_args(route, add=True) == ["global", "rib", "-a", "ipv4-flowspec", "add", "match", "destination",
                                           "192.0.2.0/24", "protocol", "tcp", "source-port", "==80",
                                           "then", "rate-limit", "1000"]
    assert gobgp_args(route, add=False)[-1] == "==80"  # a withdrawal names the match only
    for bad in ({"kind": "nullroute"}, {"action": "rate-limit"}, {"source_ports": (0,)}, {"next_hop": "nowhere"}):
        with pytest.raises(ValueError):
            Policy(**bad)


def test_a_rule_cannot_blackhole_whole_networks_or_smuggle_gobgp_options() -> None:
    from pydantic import ValidationError

    from flows.settings.alerts import Alerts

    rtbh = {"kind": "rtbh"}
    for rule in ({"name": "x", "threshold": 1, "key": "DstAddr/0/0", "mitigation": rtbh},
                 {"name": "x", "threshold": 1, "key": "DstAddr/8", "mitigation": rtbh},
                 {"name": "x", "threshold": 1, "key": "DstAS", "mitigation": rtbh},
                 {"name": "x", "threshold": 1, "mitigation": {"kind": "rtbh", "community": "65535:666 med 5"}},
                 {"name": "x", "threshold": 1, "mitigation": {"kind": "flowspec", "action": "rate-limit",
                                                             "rate": 1e40}}):
        with pytest.raises(ValidationError):
            Alerts(rules=[rule])
    with pytest.raises(ValidationError):
        Alerts(bgp={"host": "--debug"})
    assert Alerts(rules=[{"name": "x", "threshold": 1, "key": "DstAddr/24", "mitigation": rtbh}]).rules
