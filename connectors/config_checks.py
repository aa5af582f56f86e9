"""What the configuration names must exist and work on this host, checked before anything
starts (by `waxflow config check` and by every dataflow at startup), so that a bad value fails
at once naming its key instead of later with a traceback at the first message.

flows/settings.py checks values; this checks the world they point at: MMDB files that open,
librdkafka settings it knows, listener addresses of this host, directories that can be written.
Nothing here binds a configured port or connects anywhere.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from flows.settings import Settings


def _geoip(settings: Settings) -> list[str]:
    import maxminddb

    problems = []
    geoip = settings.enrichment.geoip
    for key, paths in (("asn_database", geoip.asn_database), ("geo_database", geoip.geo_database)):
        for index, path in enumerate(paths):
            try:
                maxminddb.open_database(str(path)).close()
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as err:
                problems.append(f"enrichment.geoip.{key}[{index}]: {path} is not a readable MMDB file ({err})")
    return problems


def _kafka(settings: Settings) -> list[str]:
    """librdkafka refuses unknown or invalid properties when a client is built (no connection)."""
    from confluent_kafka import Consumer, KafkaException, Producer

    from connectors.kafka import producer_config
    from connectors.kafka_consumer import consumer_config

    problems = []
    kafka = settings.kafka
    for key, build, config in (
            ("kafka.producer", Producer, {**producer_config(kafka)}),
            ("kafka.consumer", Consumer, {**consumer_config(kafka), "bootstrap.servers": kafka.bootstrap})):
        try:
            client = build({**config, "logger": _QUIET})
        except (KafkaException, ValueError, TypeError) as err:
            detail = err.args[0] if err.args else err
            problems.append(f"{key}: {detail.str() if hasattr(detail, 'str') else detail}")
            continue
        if hasattr(client, "close"):
            client.close()
    return problems


_QUIET = logging.getLogger("waxflow.config_checks.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _listeners(settings: Settings) -> list[str]:
    """Each listener's address belongs to this host (bound on an ephemeral port, not its own)."""
    problems = []
    for index, listener in enumerate(settings.inlet.listeners):
        family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((listener.address, 0))
            except OSError as err:
                why = "is not an address of this host" if err.errno == errno.EADDRNOTAVAIL else err.strerror
                problems.append(f"inlet.listeners[{index}].address: {listener.address} {why}")
    return problems


def _writable(path: Path) -> str | None:
    """Why `path` could not be used as a writable directory (None: it can). Nothing is created:
    a missing directory is judged by its nearest existing parent, where it would be made."""
    existing = path
    try:
        # lexists: a dangling or looping symlink is there, and is no directory
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{path} is not a writable directory ({existing} is not a directory)"
    except OSError as err:
        return f"{path} is not a writable directory ({err.strerror})"
    try:
        probe = existing / f".waxflow-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        where = "" if existing == path else f": cannot create it in {existing}"
        return f"{path} is not a writable directory ({err.strerror}{where})"
    return None


def _directories(settings: Settings) -> list[str]:
    problems = []
    why = _writable(Path(settings.data_dir))
    if why:
        problems.append(f"data_dir: {why}")
    if settings.clickhouse.embedded:
        why = _writable(Path(urlparse(settings.clickhouse.dsn).path))
        if why:
            problems.append(f"clickhouse.dsn: {why}")
    return problems


def environment_problems(settings: Settings, parts: tuple[str, ...] = ("geoip", "kafka", "listeners",
                                                                        "directories")) -> list[str]:
    """Every problem, as `key: what is wrong`."""
    checks = {"geoip": _geoip, "kafka": _kafka, "listeners": _listeners, "directories": _directories}
    return [problem for part in parts for problem in checks[part](settings)]


def exit_on_problems(settings: Settings, parts: tuple[str, ...]) -> None:
    """At a dataflow's start: a problem ends the process with exit 2, as a bad value does."""
    problems = environment_problems(settings, parts)
    if problems:
        print("configuration error\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        sys.exit(2)
