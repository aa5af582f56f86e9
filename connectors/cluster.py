"""Where this process sits in a Bytewax cluster."""

from __future__ import annotations

import os
import sys


def process_id() -> int:
    """This process's index in a Bytewax cluster (`-i`, or BYTEWAX_PROCESS_ID), 0 when alone.

    Bytewax does not expose it to the dataflow, so it is read from the command line that
    `python -m bytewax.run` was given.
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg in ("-i", "--process-id") and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--process-id="):
            return int(arg.split("=", 1)[1])
    return int(os.environ.get("BYTEWAX_PROCESS_ID", "0") or 0)


def recovery_enabled() -> bool:
    """Whether `python -m bytewax.run` was given a recovery directory (`-r`, or
    BYTEWAX_RECOVERY_DIRECTORY): read from its command line like process_id()."""
    argv = sys.argv
    if any(arg in ("-r", "--recovery-directory") or arg.startswith("--recovery-directory=") for arg in argv):
        return True
    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
