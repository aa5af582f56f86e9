"""The SNMP poller (connectors/snmp.py) against a real snmpd: SNMPv2c communities tried in order,
SNMPv3 with auth+priv, agent-address override, and failures counted by reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors import snmp
from flows.enrich.metadata import Interface
from flows.settings import SNMP, SNMPCredentials
from tests.snmpd import COMMUNITY, IPV6, SYS_NAME, V3_AUTH, V3_PRIV, V3_USERS, SnmpAgent

EXPECTED = {
    1: Interface("Gi0/0/1", "Transit: Cogent AS174 [10G]", 10000),   # exists on the host
    4242: Interface("xe-1/2/3", "PNI: Netflix", 100000),             # exists on no host
    4343: Interface("GigabitEthernet0/3", "GigabitEthernet0/3", 1000),  # ifDescr and ifSpeed only
    999: Interface("", "", 0),                                       # nothing at all
}


def counter(metric, *labels) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


@pytest.fixture
def poller_for() -> Iterator:
    made = []

    def make(**kw) -> snmp.SNMPPoller:
        cfg = SNMP(enabled=True, timeout="300ms", retries=0, **kw)
        made.append(snmp.SNMPPoller(cfg))
        return made[-1]

    yield make
    for poller in made:
        poller.close()


def test_v2c_communities_in_order_and_exact_values(snmp_agent: SnmpAgent, poller_for) -> None:
    poller = poller_for(credentials=[SNMPCredentials(subnet="127.0.0.0/8", port=snmp_agent.port,
                                                     communities=["wrong-one", COMMUNITY])])
    requests = counter(snmp.REQUESTS)
    result = poller.poll("127.0.0.1", sorted(EXPECTED)).result(10)
    assert result.error is None
    assert result.system_name == SYS_NAME
    assert result.interfaces == EXPECTED
    assert counter(snmp.REQUESTS) == requests + 2  # the wrong community got no answer first

    # The community that answered is tried first from now on.
    again = poller.poll("127.0.0.1", [4242]).result(10)
    assert again.interfaces == {4242: EXPECTED[4242]}
    assert counter(snmp.REQUESTS) == requests + 3


def test_many_interfaces_span_several_requests(snmp_agent: SnmpAgent, poller_for) -> None:
    poller = poller_for(credentials=[SNMPCredentials(subnet="127.0.0.1/32", port=snmp_agent.port,
                                                     communities=[COMMUNITY])])
    wanted = [1, 4242] + list(range(5000, 5000 + 3 * snmp.INTERFACES_PER_GET))
    requests = counter(snmp.REQUESTS)
    result = poller.poll("127.0.0.1", wanted).result(10)
    assert counter(snmp.REQUESTS) - requests == 4
    assert result.interfaces[4242] == EXPECTED[4242] and result.interfaces[1] == EXPECTED[1]
    assert len(result.interfaces) == len(wanted)


@pytest.mark.parametrize("user", sorted(V3_USERS))
def test_v3_auth_priv(snmp_agent: SnmpAgent, poller_for, user: str) -> None:
    auth, priv = user.split("-")[1:]
    poller = poller_for(credentials=[SNMPCredentials(
        subnet="127.0.0.0/8", port=snmp_agent.port, version="3", user=user,
        auth_protocol=auth, auth_password=V3_AUTH, priv_protocol=priv, priv_password=V3_PRIV)])
    result = poller.poll("127.0.0.1", [1, 4242]).result(10)
    assert result.error is None
    assert (result.system_name, result.interfaces) == (SYS_NAME, {1: EXPECTED[1], 4242: EXPECTED[4242]})


def test_v3_wrong_password_is_an_auth_error(snmp_agent: SnmpAgent, poller_for) -> None:
    poller = poller_for(credentials=[SNMPCredentials(
        subnet="127.0.0.0/8", port=snmp_agent.port, version="3", user="v3-sha-aes",
        auth_protocol="sha", auth_password="not-the-password", priv_protocol="aes",
        priv_password=V3_PRIV)])
    before = counter(snmp.ERRORS, "auth")
    result = poller.poll("127.0.0.1", [1]).result(10)
    assert result.error == "auth" and result.interfaces == {}
    assert counter(snmp.ERRORS, "auth") == before + 1


def test_agent_address_override_and_timeout(snmp_agent: SnmpAgent, poller_for) -> None:
    poller = poller_for(credentials=[SNMPCredentials(
        subnet="192.0.2.0/24", agent_address="127.0.0.1", port=snmp_agent.port,
        communities=[COMMUNITY])])
    assert poller.poll("192.0.2.7", [4242]).result(10).interfaces == {4242: EXPECTED[4242]}

    snmp_agent.stop()
    before = counter(snmp.ERRORS, "timeout")
    result = poller.poll("192.0.2.7", [4242]).result(10)
    assert result.error == "timeout"
    assert counter(snmp.ERRORS, "timeout") == before + 1


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")
def test_ipv6_exporter(snmp_agent: SnmpAgent, poller_for) -> None:
    poller = poller_for(credentials=[SNMPCredentials(subnet="::1/128", port=snmp_agent.port,
                                                     communities=[COMMUNITY])])
    result = poller.poll("::1", [4242]).result(10)
    assert (result.system_name, result.interfaces) == (SYS_NAME, {4242: EXPECTED[4242]})


def test_no_credentials_means_public_on_161() -> None:
    poller = snmp.SNMPPoller(SNMP(enabled=True, credentials=[
        SNMPCredentials(subnet="10.0.0.0/8", communities=["x"])]))
    try:
        fallback = poller.credentials_for("192.0.2.1")
        assert (fallback.version, fallback.communities, fallback.port) == ("2c", ["public"], 161)
        assert poller.credentials_for("10.1.2.3").communities == ["x"]
    finally:
        poller.close()
