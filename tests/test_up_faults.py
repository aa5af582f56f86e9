"""`waxflow up` under faults: an outlet whose API hangs (SIGSTOP) does not take the supervisor
down, and whether `up` is stopped by SIGTERM or killed outright, no process it started is left."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from connectors.up.monitor import Monitor
from flows.settings import Settings
from tests.conftest import free_port
from tests.test_up import Up, _config, alive, descendants


def _pid_of(up: Up, name: str) -> int:
    return int(re.search(rf"^{name}: running \(pid (\d+)", up.text(), re.M).group(1))


def _wait_gone(pids: set[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.5)
    return [pid for pid in pids if alive(pid)]


def _cleanup(up: Up) -> None:
    if up.proc.poll() is None:
        up.proc.kill()
    for pid in up.children:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_up_survives_a_hanging_outlet_api_and_sigterm_leaves_nothing(tmp_path: Path) -> None:
    _config(tmp_path)
    up = Up(tmp_path)
    try:
        up.wait_ready()
        outlet = _pid_of(up, "outlet")
        time.sleep(6)  # the top tables are being fetched from the API now and then
        os.kill(outlet, signal.SIGSTOP)  # its API accepts connections and never answers
        try:
            time.sleep(14)
            assert up.proc.poll() is None, up.text()
        finally:
            os.kill(outlet, signal.SIGCONT)
        time.sleep(3)
        assert up.proc.poll() is None, up.text()
        assert "Traceback" not in up.text(), up.text()
        everything = descendants(up.proc.pid)
        assert len(everything) >= 4, everything  # broker, outlet, inlet, demo exporter
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(150) == 0, up.text()
        assert _wait_gone(everything, 10) == [], up.text()
    finally:
        _cleanup(up)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSEGV, signal.SIGHUP])
def test_nothing_outlives_up(tmp_path: Path, how: int) -> None:
    """SIGKILL, or a crash of the interpreter itself (SIGSEGV): the kernel's PR_SET_PDEATHSIG
    stops every child, the broker included. SIGHUP (the terminal went away): an orderly stop."""
    _config(tmp_path)
    up = Up(tmp_path)
    try:
        up.wait_ready()
        everything = descendants(up.proc.pid)
        broker = int((tmp_path / "data" / "broker.pid").read_text())
        assert broker in everything
        up.proc.send_signal(how)
        up.proc.wait(150)
        assert _wait_gone(everything, 30) == [], (how, up.text())
    finally:
        _cleanup(up)


def test_rates_are_over_a_sliding_window() -> None:
    """Rows are inserted in batches: the rate over the window stays steady between them instead
    of reading 0 then twice the truth."""
    settings = Settings(api={"listen": f"127.0.0.1:{free_port()}"}, inlet={"metrics_listen": f"127.0.0.1:{free_port()}"})
    monitor = Monitor(settings, window=10)
    base = dict(datagrams=0.0, drops=0.0, acked=0.0, lag=0.0, read=0.0, flows=0.0, rows=0.0, errors=0.0,
                pending=0.0)
    rates = []
    for second in range(31):
        rows = 1000.0 * (second // 5) * 5  # a batch of 5,000 rows every 5 s: 1,000 rows/s
        rates.append(monitor.add_sample(float(second), {**base, "rows": rows, "flows": 1000.0 * second}).stored)
    assert all(r == pytest.approx(1000, rel=0.25) for r in rates[10:]), rates
    assert rates[-1] == pytest.approx(1000, rel=0.01) and monitor.status.received == pytest.approx(1000)
    assert len(monitor.samples) <= 12


def test_scrape_never_raises(tmp_path: Path) -> None:
    """Half an answer, garbage, a reset or a hang: an empty reading, never an exception."""
    import socket
    import threading

    from connectors.up.monitor import scrape

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nwaxflow_x 1\n",  # cut short
               b"HTTP/1.1 200 OK\r\n\r\n\x00\xff not prometheus {{{\n",
               b"garbage\r\n\r\n", None]

    def serve() -> None:
        for answer in answers:
            conn, _ = server.accept()
            conn.recv(4096)
            if answer is not None:
                conn.sendall(answer)
                conn.close()
            else:
                time.sleep(3)  # hang past the timeout
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        for _ in answers:
            assert scrape(f"http://127.0.0.1:{port}/metrics", timeout=1.0) == {}
    finally:
        server.close()
