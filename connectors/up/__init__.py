"""`waxflow up`: the whole pipeline on one machine as managed child processes, with a live view.

preflight.py checks ports and prerequisites and writes the resolved configuration; children.py
starts processes that cannot outlive `waxflow up` (own session, PR_SET_PDEATHSIG, process group
killed at the end); stack.py starts and stops them in order; monitor.py reads /metrics and the
API without ever raising or blocking the loop; view.py draws the terminal.

`waxflow up` survives anything its children or their APIs do (a hanging or dying API, a child
that exits): the loop only reads, and whatever happens — Ctrl-C, SIGTERM, SIGHUP, a child's
exit or a bug in the view — the stack is stopped on the way out.
"""

from __future__ import annotations

import logging
import signal
import time
import traceback
from collections.abc import Callable

from connectors.http import api_base
from connectors.up.children import Child
from connectors.up.monitor import Monitor, Status, scrape
from connectors.up.preflight import StackError, demo_config, preflight, write_config
from connectors.up.stack import Stack
from connectors.up.view import human_rate, line, render
from flows.settings import Settings

__all__ = ["Child", "Monitor", "Stack", "StackError", "Status", "demo_config", "human_rate", "preflight",
           "render", "run_up", "scrape", "write_config"]

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _watch(stack: Stack, monitor: Monitor, show: Callable[[Status], None] | None,
           say: Callable[[str], None]) -> Child | None:
    """Until a stop signal: refresh the view every second; a child that exited ends it."""
    printed = 0.0
    while not stack.interrupts:
        dead = stack.failed()
        if dead is not None:
            return dead
        status = monitor.update()
        if show is not None:
            show(status)
        elif time.monotonic() - printed >= 10:
            printed = time.monotonic()
            say(line(status))
        time.sleep(1)
    return None


def run_up(settings: Settings, *, workers: int, demo: bool, demo_rate: float) -> int:
    """`waxflow up`: start, show the status every second until a stop signal, stop; the exit code."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    interactive = console.is_terminal
    console.soft_wrap = not interactive  # log-friendly lines when piped

    def say(text: str, style: str | None = None) -> None:
        console.print(text, style=style, markup=False, highlight=False)

    stack = Stack(settings, workers=workers, demo=demo, demo_rate=demo_rate, say=say)

    def interrupted(signum: int, frame: object) -> None:
        stack.interrupts += 1
        if stack.interrupts == 2:
            say("second interrupt: killing what is left")

    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupted)
    monitor = Monitor(settings)
    failed: Child | None = None
    crashed = False
    try:
        stack.start()
        say(f"ready: console {api_base(settings)}/, API and /metrics on {api_base(settings)}, listeners "
            + ", ".join(f"{x.name} udp/{x.port}" for x in settings.inlet.listeners))
        if interactive:
            with Live(render(monitor.status, settings, demo), console=console, refresh_per_second=2) as live:
                failed = _watch(stack, monitor, lambda status: live.update(render(status, settings, demo)), say)
        else:
            failed = _watch(stack, monitor, None, say)
    except StackError as err:
        say(f"waxflow up: {err}", style="bold red")
        return 1
    except Exception:  # a bug in waxflow up itself: say so, and still stop what runs
        crashed = True
        say(f"waxflow up: internal error, stopping the stack:\n{traceback.format_exc()}", style="bold red")
    finally:
        if failed is not None:
            say(f"{failed.name} exited with code {failed.proc.returncode}; see {failed.log}\n{failed.tail()}",
                style="red")
        codes = stack.stop(monitor)
        if codes:
            # Bytewax stops abruptly on SIGINT (exit 1); the outlet was drained first, so that is expected.
            say("stopped: " + ", ".join(codes))
    return 1 if failed is not None or crashed else 0
