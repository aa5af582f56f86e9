"""The stack `waxflow up` runs: the local broker, the outlet (chDB store + HTTP API), the inlet and
optionally the demo exporter, started in order, each waited for, and stopped in order: demo
exporter, inlet (drains its sockets, flushes Kafka), then — once the outlet has read what the
inlet produced and inserted what it holds — the outlet, and the broker last."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from connectors import broker as broker_mod
from connectors.http import api_base
from connectors.launcher import LaunchError, dataflow_argv, ensure_recovery_store, recovery_dir
from connectors.up.children import Child, run_once
from connectors.up.monitor import Monitor, scrape
from connectors.up.preflight import StackError, preflight, write_config
from flows.settings import CONFIG_ENV, Settings, split_host_port

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


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
            argv = [sys.executable, "-m", "waxflow", "demo-exporter", "--rate", f"{self.demo_rate:g}"]
            self._spawn(Child("demo-exporter", argv, self.logs / "demo-exporter.log", signal.SIGTERM), env, None)

    def _start_broker(self) -> None:
        if self.broker.pid() is not None or broker_mod.answers(self.broker.bootstrap, timeout=1.0):
            self.say(f"broker: using the one already running on {self.broker.bootstrap}")
            return
        try:
            pid = self.broker.start(die_with_parent=True)
        except broker_mod.BrokerError as err:
            raise StackError(f"broker: {err}") from None
        self.own_broker = True
        self.say(f"broker: started on {self.broker.bootstrap} (pid {pid})")

    def _migrate(self, env: dict[str, str]) -> None:
        # A child process: chDB lets one process own the directory, and that will be the outlet.
        done = run_once([sys.executable, "-m", "waxflow", "migrate"], env, timeout=300)
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
        """Stop in order (see the module docstring); exit code per child. Each step is tried even
        if an earlier one failed, so nothing is left running."""
        codes: dict[str, int | None] = {}
        by_name = {c.name: c for c in self.children}
        for name in ("demo-exporter", "inlet"):
            if name in by_name:
                self.say(f"stopping {name}...")
                codes[name] = self._stop_child(by_name[name], self.settings.kafka.flush_timeout.total_seconds() + 10)
        if "outlet" in by_name:
            if monitor is not None and by_name["outlet"].running():
                self.say("waiting for the outlet to insert what it holds...")
                deadline = time.monotonic() + self.settings.clickhouse.batch_wait.total_seconds() + 20
                while time.monotonic() < deadline and not self.forced() and not monitor.drained():
                    time.sleep(1.0)
            self.say("stopping outlet...")
            codes["outlet"] = self._stop_child(by_name["outlet"], STOP_TIMEOUT)
        if self.own_broker:
            self.say("stopping broker...")
            try:
                self.broker.stop()
            except Exception as err:  # its pid file says what to kill by hand
                self.say(f"broker: could not stop it: {err}")
            self.own_broker = False
        self.children = []
        return codes

    def _stop_child(self, child: Child, timeout: float) -> int | None:
        try:
            return child.stop(timeout, self.forced)
        except Exception as err:
            self.say(f"{child.name}: could not stop it cleanly: {err}")
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
            return None


def _reset(store: Path) -> None:
    for part in store.glob("part-*.sqlite3*"):
        part.unlink()
