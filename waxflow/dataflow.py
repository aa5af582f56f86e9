"""`python -m waxflow.dataflow flows.outlet -w 2 ...`: `python -m bytewax.run` (same arguments),
minus the crash report on a clean stop.

Bytewax stops a dataflow on SIGINT by panicking in its Rust worker loop and raising
`BytewaxRuntimeError: signal received` from the KeyboardInterrupt: a page of Rust backtrace and
Python traceback in the log for what was an ordinary stop. Here the stop signals (SIGTERM
too, which would otherwise end the process without a word) raise KeyboardInterrupt, the panic's
report is kept off stderr, and the process logs one line and exits 0. A dataflow that takes the
signals itself (the inlet drains its sockets first: connectors/udp.py) replaces these handlers
while it is built.
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import sys

log = logging.getLogger("waxflow.dataflow")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class QuietStop:
    """The stop signals' handler: stderr (fd 2) goes to /dev/null from the signal until the
    KeyboardInterrupt has come back out of Bytewax (Rust's panic hook writes straight to fd 2),
    then is restored."""

    def __init__(self) -> None:
        self.saved: int | None = None
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.saved is None:
            self.signum = signum
            sys.stderr.flush()
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.saved = None


def stopped_by_signal(err: BaseException) -> bool:
    """A KeyboardInterrupt, or Bytewax's error raised from one."""
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return True
        err = err.__cause__
    return False


def main() -> int:
    handler = QuietStop()
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
    except BaseException as err:
        handler.restore()
        if not stopped_by_signal(err):
            raise
        name = signal.Signals(handler.signum).name if handler.signum else "interrupt"
        log.info("%s: dataflow stopped", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
