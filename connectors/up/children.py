"""The processes `waxflow up` runs: each in a session of its own, stopped with the kernel's help
(PR_SET_PDEATHSIG) if `waxflow up` dies, and its whole process group killed at the end."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from connectors.process import die_with_parent, kill_group


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
                                         env=env, preexec_fn=die_with_parent())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float, forced: Callable[[], bool]) -> int | None:
        """Ask it to stop, wait `timeout` (or until `forced()`), then kill; its exit code. Whatever
        it started itself (its process group) is killed too."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline and not forced():
                time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        kill_group(self.proc.pid)
        return code


def run_once(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """A short-lived child (the migrations) that also dies with `waxflow up` and is killed, with
    its group, when it overruns `timeout`."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err = f"{err}\ndid not finish within {timeout:.0f}s"
    finally:
        kill_group(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
