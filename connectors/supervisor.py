"""`waxflow up`: the local broker, the outlet (chDB store + HTTP API), the inlet and optionally
the demo exporter as managed child processes, with a live status from their /metrics and API.

Children run in sessions of their own, so the terminal's Ctrl-C reaches only the supervisor,
which stops them in order: demo exporter, inlet (drains its sockets, flushes Kafka), then waits
until the outlet has read what the inlet produced and inserted what it holds, stops the outlet,
and stops the broker last. A second Ctrl-C kills whatever is left. Children also get SIGTERM if
the supervisor dies (PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors import broker as broker_mod
from connectors.http import APIError, APIUnavailable, api_base, call_api
from connectors.launcher import LaunchError, dataflow_argv, ensure_recovery_store, recovery_dir
from flows.settings import CONFIG_ENV, Settings, split_host_port

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


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
    try:
        broker_mod.broker_binary()
    except broker_mod.BrokerError as err:
        problems.append(f"{err} (run ./scripts/bootstrap.sh)")
    data_dir = Path(settings.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        problems.append(f"data_dir {data_dir} is not writable: {err.strerror}")
    return problems


# --- children ----------------------------------------------------------------------------------

def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    stop_signal: int = signal.SIGINT
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=_die_with_parent)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float, forced: Callable[[], bool]) -> int | None:
        """Ask it to stop, wait `timeout` (or until `forced()`), then kill; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline and not forced():
                time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


# --- metrics -----------------------------------------------------------------------------------

def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Prometheus text → {sample name: sum over labels}; empty when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read().decode()
    except (OSError, ValueError):
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@dataclass
class Status:
    """What the live view shows, from two successive scrapes."""

    received: float = 0.0  # flows/s decoded by the outlet
    stored: float = 0.0  # rows/s inserted
    datagrams: float = 0.0  # datagrams/s received by the inlet
    kernel_drops: float = 0.0
    decode_errors: float = 0.0
    lag: float = 0.0  # the outlet's consumer lag, summed over partitions
    rows_total: float = 0.0
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


class Monitor:
    TOP = (("exporters", "ExporterName"), ("AS", "SrcAS"), ("interfaces", "InIfDescription"))

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        host, port = split_host_port(settings.inlet.metrics_listen)
        self.inlet_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/metrics"
        self.outlet_url = api_base(settings) + "/metrics"
        self.previous: tuple[float, dict[str, float]] | None = None
        self.status = Status()
        self.top_at = 0.0
        self.acked_seen = 0.0
        self.last_read = -1.0
        self.as_names: dict[int, str] | None = None

    def _totals(self) -> dict[str, float]:
        inlet, outlet = scrape(self.inlet_url), scrape(self.outlet_url)
        return {
            "datagrams": inlet.get("waxflow_inlet_datagrams_total", 0.0),
            "drops": inlet.get("waxflow_inlet_kernel_drops_total", 0.0),
            "acked": inlet.get("waxflow_inlet_kafka_acked_total", 0.0),
            "lag": outlet.get("waxflow_kafka_consumer_lag", 0.0),
            "read": outlet.get("waxflow_outlet_messages_total", 0.0),
            "flows": outlet.get("waxflow_outlet_flows_total", 0.0),
            "rows": outlet.get("waxflow_clickhouse_rows_total", 0.0),
            "errors": outlet.get("waxflow_decode_errors_total", 0.0),
            "pending": outlet.get("waxflow_clickhouse_pending_rows", 0.0),
        }

    def update(self, with_top: bool = True) -> Status:
        now, totals = time.monotonic(), self._totals()
        s = self.status
        if self.previous is not None:
            elapsed = max(1e-6, now - self.previous[0])
            before = self.previous[1]
            rate = lambda key: max(0.0, totals[key] - before[key]) / elapsed  # noqa: E731
            s.received, s.stored, s.datagrams = rate("flows"), rate("rows"), rate("datagrams")
        s.kernel_drops, s.decode_errors, s.rows_total = totals["drops"], totals["errors"], totals["rows"]
        s.lag = totals["lag"]
        self.acked_seen = max(self.acked_seen, totals["acked"])
        self.previous = (now, totals)
        if with_top and now - self.top_at >= 5:
            self.top_at = now
            s.top = self._top()
        return s

    def _top(self) -> dict[str, list[tuple[str, float]]]:
        out = {}
        for title, dimension in self.TOP:
            try:
                body = call_api(self.settings, "/api/v0/flows", {"from": "-5m", "dimensions": dimension,
                                                                 "limit": "5", "points": "1"}, timeout=10)
            except (APIError, APIUnavailable):
                continue
            out[title] = [(self._label(dimension, s["dimensions"]), s["average"]) for s in body["series"]]
        return out

    def _label(self, dimension: str, values: list[str]) -> str:
        """`AS2906 Netflix` for AS numbers (the shipped or configured AS names), else the value."""
        text = " ".join(values) or "-"
        if dimension.endswith("AS") and text.isdigit():
            if self.as_names is None:
                from connectors.clickhouse import lookup_rows

                self.as_names = {int(asn): name for asn, name in lookup_rows("asns", self.settings.clickhouse)}
            return f"AS{text} {self.as_names.get(int(text), '')}".rstrip()
        return text

    def drained(self) -> bool:
        """The outlet has read at least what the inlet was last seen acknowledging (its /metrics go
        away when it stops), has read nothing more since the previous call, and holds no rows."""
        totals = self._totals()
        self.acked_seen = max(self.acked_seen, totals["acked"])
        steady = totals["read"] == self.last_read
        self.last_read = totals["read"]
        return steady and totals["read"] >= self.acked_seen and totals["pending"] == 0


# --- the stack ---------------------------------------------------------------------------------

class Stack:
    def __init__(self, settings: Settings, *, workers: int = 1, demo: bool = False, demo_rate: float = 500,
                 say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.workers = workers
        self.demo = demo
        self.demo_rate = demo_rate
        self.say = say
        self.broker = broker_mod.from_bootstrap(settings.kafka.brokers[0], Path(settings.data_dir))
        self.own_broker = False
        self.children: list[Child] = []
        self.interrupts = 0
        self.logs = Path(settings.data_dir) / "logs"

    def forced(self) -> bool:
        return self.interrupts >= 2

    def start(self) -> None:
        running = self.broker.pid() is not None or broker_mod.answers(self.broker.bootstrap, timeout=1.0)
        problems = preflight(self.settings, broker_running=running)
        if problems:
            raise StackError("cannot start:\n  " + "\n  ".join(problems))
        config = write_config(self.settings, self.demo)
        env = {**os.environ, CONFIG_ENV: str(config)}
        self._start_broker()
        self._migrate(env)
        try:
            outlet_store = recovery_dir(self.settings.data_dir, "outlet")
            if self.own_broker:
                _reset(outlet_store)  # a fresh memory-only broker: old offsets point at nothing
            argv_outlet = dataflow_argv("outlet", workers=self.workers, recovery=ensure_recovery_store(outlet_store),
                                        snapshot_seconds=10)
            argv_inlet = dataflow_argv("inlet", workers=self.workers)
        except LaunchError as err:
            self.stop()
            raise StackError(str(err)) from None
        self._spawn(Child("outlet", argv_outlet, self.logs / "outlet.log"), env, self._outlet_ready)
        self._spawn(Child("inlet", argv_inlet, self.logs / "inlet.log"), env, self._inlet_ready)
        if self.demo:
            argv = [sys.executable, "-m", "flows.cli", "demo-exporter", "--rate", f"{self.demo_rate:g}"]
            self._spawn(Child("demo-exporter", argv, self.logs / "demo-exporter.log", signal.SIGTERM), env, None)

    def _start_broker(self) -> None:
        if self.broker.pid() is not None or broker_mod.answers(self.broker.bootstrap, timeout=1.0):
            self.say(f"broker: using the one already running on {self.broker.bootstrap}")
            return
        try:
            pid = self.broker.start()
        except broker_mod.BrokerError as err:
            raise StackError(f"broker: {err}") from None
        self.own_broker = True
        self.say(f"broker: started on {self.broker.bootstrap} (pid {pid})")

    def _migrate(self, env: dict[str, str]) -> None:
        # A child process: chDB lets one process own the directory, and that will be the outlet.
        done = subprocess.run([sys.executable, "-m", "flows.cli", "migrate"], env=env, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            self.stop()
            raise StackError(f"migrations failed:\n{(done.stderr or done.stdout).strip()[-2000:]}")
        self.say("store: migrations applied" if "applied" in done.stdout else "store: up to date")

    def _spawn(self, child: Child, env: dict[str, str], ready: Callable[[], bool] | None) -> None:
        child.start(env)
        self.children.append(child)
        deadline = time.monotonic() + START_TIMEOUT
        while ready is not None and not ready():
            if not child.running() or time.monotonic() > deadline or self.interrupts:
                why = "interrupted" if self.interrupts else (
                    f"exited with code {child.proc.returncode}" if not child.running() else "did not become ready")
                tail = child.tail()
                self.stop()
                raise StackError(f"{child.name} {why}; see {child.log}\n{tail}")
            time.sleep(0.2)
        self.say(f"{child.name}: running (pid {child.proc.pid}, log {child.log})")

    def _outlet_ready(self) -> bool:
        return bool(scrape(api_base(self.settings) + "/metrics", timeout=1.0))

    def _inlet_ready(self) -> bool:
        host, port = split_host_port(self.settings.inlet.metrics_listen)
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return bool(scrape(f"http://{host}:{port}/metrics", timeout=1.0))

    def failed(self) -> Child | None:
        """A child that exited on its own."""
        return next((c for c in self.children if not c.running()), None)

    def stop(self, monitor: Monitor | None = None) -> dict[str, int | None]:
        """Stop in order (see the module docstring); exit code per child."""
        codes: dict[str, int | None] = {}
        by_name = {c.name: c for c in self.children}
        for name in ("demo-exporter", "inlet"):
            if name in by_name:
                self.say(f"stopping {name}...")
                codes[name] = by_name[name].stop(self.settings.kafka.flush_timeout.total_seconds() + 10, self.forced)
        if "outlet" in by_name:
            if monitor is not None and by_name["outlet"].running():
                self.say("waiting for the outlet to insert what it holds...")
                deadline = time.monotonic() + self.settings.clickhouse.batch_wait.total_seconds() + 20
                while time.monotonic() < deadline and not self.forced() and not monitor.drained():
                    time.sleep(1.0)
            self.say("stopping outlet...")
            codes["outlet"] = by_name["outlet"].stop(STOP_TIMEOUT, self.forced)
        if self.own_broker:
            self.say("stopping broker...")
            self.broker.stop()
        return codes


def _reset(store: Path) -> None:
    for part in store.glob("part-*.sqlite3*"):
        part.unlink()


# --- the terminal --------------------------------------------------------------------------------

def human_rate(value: float, unit: str = "") -> str:
    """1234567 → `1.23 M` + unit."""
    for size, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}".rstrip()


def render(status: Status, settings: Settings, demo: bool):
    """The live view: counters on top, the top-5 tables below."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    figures = Table.grid(padding=(0, 3))
    figures.add_row("flows/s received", f"{status.received:,.0f}", "datagrams/s", f"{status.datagrams:,.0f}",
                    "Kafka lag", f"{status.lag:,.0f} msgs")
    figures.add_row("rows/s stored", f"{status.stored:,.0f}", "kernel drops", f"{status.kernel_drops:,.0f}",
                    "decode errors", f"{status.decode_errors:,.0f}")
    tops = Table.grid(padding=(0, 2))
    columns = []
    for title, _ in Monitor.TOP:
        table = Table(title=f"top {title} (5 min)", show_edge=False, title_justify="left")
        table.add_column(title)
        table.add_column("bps", justify="right")
        for name, value in status.top.get(title, [])[:6]:
            table.add_row(name[:38], human_rate(value))
        columns.append(table)
    tops.add_row(*columns)
    footer = (f"API {api_base(settings)}/api/v0/flows · `waxflow top --by SrcAS` · "
              f"{status.rows_total:,.0f} rows stored · Ctrl-C stops")
    title = "waxflow up" + (" --demo" if demo else "")
    return Panel(Group(figures, "", tops, "", footer), title=title)


def _line(status: Status) -> str:
    return (f"flows/s {status.received:,.0f} · rows/s {status.stored:,.0f} · lag {status.lag:,.0f} · "
            f"kernel drops {status.kernel_drops:,.0f} · decode errors {status.decode_errors:,.0f} · "
            f"rows {status.rows_total:,.0f}")


def run_up(settings: Settings, *, workers: int, demo: bool, demo_rate: float) -> int:
    """`waxflow up`: start, show the status every second until Ctrl-C, stop; the exit code."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    interactive = console.is_terminal
    console.soft_wrap = not interactive  # log-friendly lines when piped
    stack = Stack(settings, workers=workers, demo=demo, demo_rate=demo_rate,
                  say=lambda text: console.print(text, markup=False, highlight=False))

    def interrupted(signum: int, frame: object) -> None:
        stack.interrupts += 1
        if stack.interrupts == 2:
            console.print("second interrupt: killing what is left", highlight=False)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)
    try:
        stack.start()
    except StackError as err:
        console.print(f"waxflow up: {err}", style="bold red", markup=False, highlight=False)
        return 1
    monitor = Monitor(settings)
    failed = None
    console.print(f"ready: API and /metrics on {api_base(settings)}, listeners "
                  + ", ".join(f"{x.name} udp/{x.port}" for x in settings.inlet.listeners), highlight=False)

    def loop(show: Callable[[Status], None]) -> Child | None:
        printed = 0.0
        while not stack.interrupts:
            dead = stack.failed()
            if dead is not None:
                return dead
            status = monitor.update()
            if interactive:
                show(status)
            elif time.monotonic() - printed >= 10:
                printed = time.monotonic()
                console.print(_line(status), highlight=False)
            time.sleep(1)
        return None

    if interactive:
        with Live(render(monitor.status, settings, demo), console=console, refresh_per_second=2) as live:
            failed = loop(lambda status: live.update(render(status, settings, demo)))
    else:
        failed = loop(lambda status: None)
    if failed is not None:
        console.print(f"{failed.name} exited with code {failed.proc.returncode}; see {failed.log}\n"
                      f"{failed.tail()}", style="red", markup=False, highlight=False)
    codes = stack.stop(monitor)
    # Bytewax stops abruptly on SIGINT (exit 1); the outlet was drained first, so that is expected.
    console.print("stopped: " + ", ".join(codes), highlight=False)
    return 1 if failed is not None else 0
