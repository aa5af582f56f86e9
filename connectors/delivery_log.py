"""The sink's durable delivery state: the block being inserted, and the marks of what is stored.

Per sink partition, in its own directory:

- `blocks/<n>.arrow`: a block written before its insert starts (Arrow IPC file; its metadata
  holds the insert's deduplication token and the marks it reaches). A block still here at
  start was perhaps stored, perhaps not, perhaps only in some tables: it is inserted again
  with the same token, which ClickHouse deduplicates in `flows` and, table by table, in the
  views' tables (deduplicate_blocks_in_dependent_materialized_views).
- `marks.sqlite`: per (exporter, partition) the highest position (offset generation, offset)
  and TimeReceived stored
  (flows/delivery.py), advanced in one transaction after each acknowledged insert, before the
  block file is removed.

Survives the process being killed at any point (SQLite in WAL mode with synchronous=NORMAL
commits durably against a process crash; a block is renamed into place only once written).
A power loss may lose the last commits, as it may lose the store's last parts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from pathlib import Path

import pyarrow as pa

from flows.delivery import Key, Mark

_TOKEN = b"waxflow.token"
_REACHES = b"waxflow.reaches"


class DeliveryLog:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.blocks = self.directory / "blocks"
        self.blocks.mkdir(parents=True, exist_ok=True)
        for partial in self.blocks.glob("*.tmp"):
            partial.unlink()  # never renamed into place: its insert never started
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.directory / "marks.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # `advanced` orders the marks by their last advance: the in-memory bound forgets the
        # least recently advanced first, also after a restart.
        self._db.execute("CREATE TABLE IF NOT EXISTS marks (exporter TEXT NOT NULL, part INTEGER NOT NULL, "
                         "position INTEGER NOT NULL, received INTEGER NOT NULL, advanced INTEGER NOT NULL, "
                         "PRIMARY KEY (exporter, part))")
        self._advanced = self._db.execute("SELECT coalesce(max(advanced), 0) FROM marks").fetchone()[0]
        self._next = 1 + max((int(p.stem) for p in self.blocks.glob("*.arrow") if p.stem.isdigit()), default=0)

    def marks(self) -> dict[Key, Mark]:
        with self._lock:
            rows = self._db.execute("SELECT exporter, part, position, received FROM marks ORDER BY advanced").fetchall()
        return {(exporter, part): Mark(position, received) for exporter, part, position, received in rows}

    def write(self, table: pa.Table, reaches: dict[Key, Mark]) -> tuple[Path, str]:
        """Write a block before inserting it; returns its file and its deduplication token."""
        token = f"waxflow-{uuid.uuid4().hex}"
        meta = {_TOKEN: token.encode(), _REACHES: _encode(reaches)}
        with self._lock:
            number, self._next = self._next, self._next + 1
        path = self.blocks / f"{number:012d}.arrow"
        partial = path.with_suffix(".tmp")
        with pa.OSFile(str(partial), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema.with_metadata(meta)) as writer:
            writer.write_table(table)  # as it is inserted: the same record batches
        os.replace(partial, path)
        return path, token

    def pending(self) -> list[Path]:
        """Blocks written whose insert was not acknowledged, oldest first."""
        return sorted(self.blocks.glob("*.arrow"))

    @staticmethod
    def read(path: Path) -> tuple[pa.Table, str, dict[Key, Mark]]:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        meta = table.schema.metadata or {}
        return table.replace_schema_metadata(None), meta[_TOKEN].decode(), _decode(meta[_REACHES])

    def acknowledged(self, path: Path, reaches: dict[Key, Mark]) -> None:
        """The block's insert succeeded: advance the marks, then forget the block."""
        with self._lock:
            self._advanced += 1
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO marks VALUES (?, ?, ?, ?, ?) ON CONFLICT (exporter, part) DO UPDATE SET "
                "position = max(position, excluded.position), received = max(received, excluded.received), "
                "advanced = excluded.advanced",
                [(exporter, part, mark.position, mark.received, self._advanced)
                 for (exporter, part), mark in reaches.items()])
            self._db.execute("COMMIT")
        path.unlink(missing_ok=True)

    def forget(self, keys: list[Key]) -> None:
        """Drop marks the in-memory bound let go of (flows/delivery.Marks)."""
        with self._lock:
            self._db.executemany("DELETE FROM marks WHERE exporter = ? AND part = ?", keys)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _encode(reaches: dict[Key, Mark]) -> bytes:
    return json.dumps([[e, p, m.position, m.received] for (e, p), m in reaches.items()]).encode()


def _decode(data: bytes) -> dict[Key, Mark]:
    return {(e, p): Mark(o, r) for e, p, o, r in json.loads(data)}
