"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets a session (and process group) of its own, so the
    terminal's Ctrl-C reaches only the parent, and `sig` when the parent dies, however it dies
    (SIGKILL included: the kernel sends it). If the parent is already gone by the time the
    child runs this, the child exits at once instead of living on as an orphan."""
    parent = os.getpid()

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        os.setsid()
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os._exit(1)

    return setup


def kill_group(pid: int) -> None:
    """SIGKILL what is left of a child's process group (its own children included)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
