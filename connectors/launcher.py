"""Starting the dataflows the way users should: recovery store prepared, Bytewax flags built.

`waxflow run outlet` and `waxflow up` use this, so nobody has to remember to run
`python -m bytewax.recovery` first or how many partitions the store was made with.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

DATAFLOWS = {"inlet": "flows.inlet", "outlet": "flows.outlet"}

# Recovery partitions are independent of the worker count and fixed for a store's lifetime;
# a few let the workers of several processes write snapshots in parallel.
RECOVERY_PARTITIONS = 4


class LaunchError(RuntimeError):
    """A dataflow cannot be started as asked (the message says why)."""


def recovery_dir(data_dir: Path, dataflow: str) -> Path:
    """Where a dataflow's recovery store lives under the configured data directory."""
    return Path(data_dir) / "recovery" / dataflow


def ensure_recovery_store(directory: Path, partitions: int = RECOVERY_PARTITIONS) -> Path:
    """Create the Bytewax recovery store in `directory` unless it already holds one.

    An existing store is kept as it is (its snapshots are the point); only an empty or
    missing directory is initialised. The processes of a cluster start together on the same
    data_dir: a lock beside the store lets one create it while the others wait and reuse it.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if directory.exists() and any(directory.glob("part-*.sqlite3")):
            return directory
        directory.mkdir(exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), str(partitions)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise LaunchError(f"cannot create the recovery store in {directory}: {done.stderr.strip()}")
    return directory


def dataflow_argv(dataflow: str, *, workers: int = 1, recovery: Path | None = None,
                  snapshot_seconds: float = 30, process_id: int | None = None,
                  addresses: list[str] | None = None) -> list[str]:
    """The command line for one process of a dataflow: `python -m bytewax.run`'s arguments,
    through waxflow.dataflow (a clean stop without a crash report)."""
    if dataflow not in DATAFLOWS:
        raise LaunchError(f"unknown dataflow {dataflow!r}; one of {', '.join(DATAFLOWS)}")
    if workers < 1:
        raise LaunchError("workers must be at least 1")
    argv = [sys.executable, "-m", "waxflow.dataflow", DATAFLOWS[dataflow], "-w", str(workers)]
    if recovery is not None:
        # -b 0: snapshots older than the last complete epoch are not kept around.
        argv += ["-r", str(recovery), "-s", f"{snapshot_seconds:g}", "-b", "0"]
    if addresses:
        if process_id is None:
            raise LaunchError("a multi-process run needs the process id (-i)")
        argv += ["-i", str(process_id), "-a", ";".join(addresses)]
    return argv
