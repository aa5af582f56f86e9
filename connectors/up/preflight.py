"""Before `waxflow up` starts anything: every port and prerequisite checked, and the one resolved
configuration its processes all read."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from connectors import broker as broker_mod
from connectors.config_checks import environment_problems
from flows.settings import Settings, split_host_port


class StackError(RuntimeError):
    """The stack cannot start (a port is taken, a prerequisite is missing); the message says why."""


# --- preparation -------------------------------------------------------------------------------

def demo_config(settings: Settings) -> dict:
    """The user's configuration with the demo routers' metadata and networks added."""
    from flows.demo import demo_enrichment

    data = settings.dump()
    extra = demo_enrichment()
    data["enrichment"]["static"] = {**extra["static"], **data["enrichment"]["static"]}
    data["enrichment"]["networks"] = {**extra["networks"], **data["enrichment"]["networks"]}
    # The demo's rules only match the demo routers' subnet; first in line, so they decide for
    # those routers while the user's rules still apply to everything else.
    classifiers = data["enrichment"]["classifiers"]
    for kind, rules in extra["classifiers"].items():
        classifiers[kind] = list(rules) + list(classifiers.get(kind) or [])
    return data


def write_config(settings: Settings, demo: bool) -> Path:
    """The resolved configuration every child reads (so they all see the same values)."""
    path = Path(settings.data_dir) / "up" / "dataflows.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = demo_config(settings) if demo else settings.dump()
    header = "# Written by `waxflow up`" + (" --demo" if demo else "") + ": the configuration its processes run with.\n"
    # It may hold SNMP passphrases and the API token: readable by the owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(header + yaml.safe_dump(data, sort_keys=False))
    os.chmod(path, 0o600)
    return path.resolve()


def _unavailable(host: str, port: int, kind: int) -> str | None:
    """Why host:port cannot be bound, None if it can."""
    try:
        return "taken by another program" if broker_mod.port_taken(host, port, kind) else None
    except broker_mod.BrokerError as err:
        return str(err)


def preflight(settings: Settings, broker_running: bool) -> list[str]:
    """Every reason the stack cannot start, each naming the setting to change."""
    problems = []
    for index, listener in enumerate(settings.inlet.listeners):
        why = _unavailable(listener.address, listener.port, socket.SOCK_DGRAM)
        if why:
            problems.append(f"UDP port {listener.port} on {listener.address} is {why} "
                            f"(inlet.listeners[{index}].port)")
    checks = [(settings.inlet.metrics_listen, "inlet.metrics_listen"), (settings.api.listen, "api.listen")]
    if not broker_running:
        checks.append((settings.kafka.brokers[0], "kafka.brokers"))
    for address, key in checks:
        host, port = split_host_port(address)
        why = _unavailable(host, port, socket.SOCK_STREAM)
        if why:
            problems.append(f"TCP port {port} on {host} is {why} ({key})")
    if not broker_running:  # a running broker (a local one, or Kafka) needs no tansu
        try:
            broker_mod.broker_binary()
        except broker_mod.BrokerError as err:
            problems.append(str(err))
    # what every dataflow checks at its start (files, Kafka client settings, addresses, directories)
    problems.extend(environment_problems(settings))
    return problems
