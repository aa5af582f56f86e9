"""The conventions every waxflow process follows: `waxflow --version`; the `logging` section
and `--log-level` taking effect in the dataflow processes `waxflow run` starts (text or JSON
lines); a SIGINT/SIGTERM stop that exits 0 with one log line and no crash report; /metrics
without `_created` series. A real outlet process (embedded store, no broker needed)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WAXFLOW__LOGGING__LEVEL", None)
    return env


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "waxflow", "--version"], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"waxflow {importlib.metadata.version('waxflow')}\n"


class Outlet:
    """`waxflow [ARGS] run outlet --no-recovery` in a directory of its own, stderr to a file."""

    def __init__(self, workdir: Path, broker: str, topic: str, logging: str, *args: str) -> None:
        self.api = free_port()
        (workdir / "dataflows.yaml").write_text(
            f"kafka: {{brokers: ['{broker}'], topic: {topic}, partitions: 1}}\n"
            f"api: {{listen: '127.0.0.1:{self.api}'}}\nlogging: {logging}\n")
        self.log = workdir / "outlet.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "waxflow", *args, "run", "outlet", "--no-recovery"],
                                         cwd=workdir, stdout=subprocess.DEVNULL, stderr=out, env=_env())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/metrics", timeout=5) as answer:
                    return answer.read().decode()
            except OSError:
                assert time.monotonic() < deadline, self.text()
                time.sleep(0.5)

    def stop(self, signum: int) -> int:
        time.sleep(2)  # past startup: into Bytewax's run loop
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


def test_json_logs_at_the_configured_level_and_a_quiet_sigterm(tmp_path: Path, broker, topic_name: str) -> None:
    outlet = Outlet(tmp_path, broker.bootstrap, topic_name, "{level: info, format: json}")
    exposed = outlet.metrics()
    assert "waxflow_outlet_flows_total" in exposed, exposed[:2000]
    assert "_created" not in exposed, [line for line in exposed.splitlines() if "_created" in line][:5]
    assert outlet.stop(signal.SIGTERM) == 0, outlet.text()
    # Every line of waxflow's is one JSON object (librdkafka writes its own "%N|..." lines).
    lines = [json.loads(line) for line in outlet.text().splitlines() if not line.startswith("%")]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert {line["level"] for line in lines} == {"INFO"}
    assert any(line["message"].startswith("api: serving") for line in lines)
    assert lines[-1]["message"] == "SIGTERM: dataflow stopped", lines[-3:]
    assert not [line for line in lines if "exception" in line]


@pytest.mark.parametrize("logging, options", [
    ("{level: DEBUG}", ("--log-level", "warning")),  # the option wins over the file
    ("{level: WARNING}", ()),
])
def test_the_level_reaches_the_dataflow_and_sigint_stops_it_quietly(tmp_path: Path, broker, topic_name: str,
                                                                     logging: str, options: tuple[str, ...]) -> None:
    outlet = Outlet(tmp_path, broker.bootstrap, topic_name, logging, *options, "-c", "dataflows.yaml")
    outlet.metrics()  # up and serving: the INFO line saying so must not be there
    assert outlet.stop(signal.SIGINT) == 0, outlet.text()
    text = outlet.text()
    assert "api: serving" not in text and " INFO " not in text and " DEBUG " not in text, text
    assert "Traceback" not in text and "panicked" not in text and "signal received" not in text, text


@pytest.mark.parametrize("text, key", [
    ("logging: {level: loud}\n", "logging.level"),
    ("logging: {format: xml}\n", "logging.format"),
    ("logging: {colour: true}\n", "logging.colour"),
])
def test_config_check_names_a_bad_logging_value(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "dataflows.yaml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "waxflow", "config", "check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 2 and f"  {key}: " in done.stderr, done.stderr


def test_a_second_sigterm_ends_a_dataflow_that_does_not_notice_the_first(tmp_path: Path) -> None:
    """No broker answers: Bytewax waits for the topic's partitions in Rust code that does not
    look at signals, so the first SIGTERM cannot stop it; the second ends the process."""
    outlet = Outlet(tmp_path, f"127.0.0.1:{free_port()}", "nowhere", "{level: INFO}")
    outlet.metrics()
    time.sleep(2)
    outlet.proc.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert outlet.proc.poll() is None, outlet.text()  # still waiting: the premise of this test
    assert outlet.stop(signal.SIGTERM) == 128 + signal.SIGTERM, outlet.text()
