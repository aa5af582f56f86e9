"""The launcher prepares the recovery store once and builds the Bytewax command line."""

import sys

import pytest

from connectors.launcher import LaunchError, dataflow_argv, ensure_recovery_store, recovery_dir


def test_recovery_store_created_once_and_kept(tmp_path):
    store = ensure_recovery_store(recovery_dir(tmp_path, "outlet"), partitions=2)
    parts = sorted(p.name for p in store.glob("part-*.sqlite3"))
    assert parts == ["part-0.sqlite3", "part-1.sqlite3"]
    before = [p.stat().st_mtime_ns for p in sorted(store.glob("part-*.sqlite3"))]
    ensure_recovery_store(store, partitions=2)
    assert [p.stat().st_mtime_ns for p in sorted(store.glob("part-*.sqlite3"))] == before


def test_dataflow_argv(tmp_path):
    argv = dataflow_argv("outlet", workers=2, recovery=tmp_path, snapshot_seconds=5,
                         process_id=1, addresses=["a:1", "b:2"])
    assert argv == [sys.executable, "-m", "waxflow.dataflow", "flows.outlet", "-w", "2",
                    "-r", str(tmp_path), "-s", "5", "-b", "0", "-i", "1", "-a", "a:1;b:2"]
    with pytest.raises(LaunchError, match="unknown dataflow"):
        dataflow_argv("sideways")
    with pytest.raises(LaunchError, match="process id"):
        dataflow_argv("inlet", addresses=["a:1"])


def test_processes_starting_together_share_one_store(tmp_path):
    """The processes of a cluster prepare the same store at once: one creates it, all use it."""
    from concurrent.futures import ThreadPoolExecutor

    target = recovery_dir(tmp_path, "outlet")
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: ensure_recovery_store(target, partitions=2), range(4)))
    assert stores == [target] * 4
    assert sorted(p.name for p in target.glob("part-*.sqlite3")) == ["part-0.sqlite3", "part-1.sqlite3"]
    import sqlite3
    for part in target.glob("part-*.sqlite3"):  # complete stores, not half-made ones
        tables = {r[0] for r in sqlite3.connect(part).execute("SELECT name FROM sqlite_master")}
        assert "snaps" in tables and "fronts" in tables
