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
import threading

log = logging.getLogger("waxflow.dataflow")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


QUIET_SECONDS = 10


class QuietStop:
    """The stop signals' handler: stderr (fd 2) goes to /dev/null from the signal until the
    KeyboardInterrupt has come back out of Bytewax (Rust's panic hook writes straight to fd 2),
    then is restored; at the latest after QUIET_SECONDS, so that a dataflow slow to notice the
    signal (Bytewax checks for them between steps) does not lose its logs. A second signal
    ends the process at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.saved: int | None = None
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.flush()
        with self.lock:
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        timer = threading.Timer(QUIET_SECONDS, self.restore)
        timer.daemon = True  # never holds up the exit
        timer.start()
        raise KeyboardInterrupt

    def restore(self) -> None:
        with self.lock:
            if self.saved is not None:
                os.dup2(self.saved, 2)
                os.close(self.saved)
                self.saved = None


def second_signal_exits() -> None:
    """A second stop signal ends the process at once, even while Bytewax holds the main thread
    in Rust code that does not check for signals (a Python handler would then never run):
    the C-level handler writes each signal to the wakeup pipe, read here by a thread."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        seen = 0
        while True:
            for signum in os.read(read, 64):
                if signum in STOP_SIGNALS:
                    seen += 1
                    if seen >= 2:
                        os._exit(128 + signum)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


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
    second_signal_exits()
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
