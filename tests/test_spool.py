"""The inlet's on-disk spool (connectors/spool.py): FIFO across segments and restarts, bounded,
a record torn by a crash cut off, delivered records forgotten only when told."""

from __future__ import annotations

import pytest

from connectors import spool as spool_mod
from connectors.spool import Spool


def test_records_come_back_in_order_across_segments_and_a_restart(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 1000)
    spool = Spool(tmp_path, 1 << 20)
    values = [bytes([i % 256]) * (10 + i) for i in range(100)]
    assert spool.append(values) == 100 and spool.messages == 100
    assert len(list(tmp_path.glob("*.seg"))) > 3
    first, position, size = spool.peek(30)
    assert first == values[:30]
    spool.advance(position, len(first), size)
    spool.close()
    again = Spool(tmp_path, 1 << 20)  # a restart: the head was kept
    assert again.messages == 70
    rest, position, size = again.peek(1000)
    assert rest == values[30:]
    again.advance(position, len(rest), size)
    assert again.messages == 0 and again.bytes == 0
    assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) == 0  # the files shrink to nothing
    again.append([b"new"])
    assert again.peek(10)[0] == [b"new"]


def test_what_was_not_advanced_is_read_again_after_a_kill(tmp_path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([b"a", b"b", b"c"])
    spool.peek(2)  # handed to the producer, never acknowledged
    # killed here: no advance, no close
    assert Spool(tmp_path, 1 << 20).peek(10)[0] == [b"a", b"b", b"c"]


def test_a_record_torn_by_a_crash_is_cut_off(tmp_path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([b"whole"])
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as handle:
        handle.write(b"\x00\x00\x01\x00half")  # a 256-byte record's first 4 bytes
    again = Spool(tmp_path, 1 << 20)
    again.append([b"next"])
    assert again.peek(10)[0] == [b"whole", b"next"]


@pytest.mark.parametrize("limit", [50, 200])
def test_the_spool_is_bounded_in_bytes(tmp_path, limit: int) -> None:
    spool = Spool(tmp_path, limit)
    kept = spool.append([b"x" * 20] * 20)
    assert kept == limit // 24 and spool.bytes <= limit


def test_a_head_a_kill_left_pointing_at_a_deleted_file_or_past_its_end_is_repaired(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 100)
    spool = Spool(tmp_path, 1 << 20)
    spool.append([bytes([i]) * 40 for i in range(6)])  # 3 segments of 2 records
    spool.close()
    first = min(tmp_path.glob("*.seg"))
    first.unlink()  # the files went before the head moved (a kill in between)
    (tmp_path / "head").write_text(f"{int(first.stem)} 44\n")
    again = Spool(tmp_path, 1 << 20)
    assert again.peek(10)[0] == [bytes([i]) * 40 for i in range(2, 6)] and again.bytes == 4 * 44
    again.close()
    (tmp_path / "head").write_text(f"{int(first.stem) + 1} 9999\n")  # past the file's end
    assert Spool(tmp_path, 1 << 20).peek(10)[0] == [bytes([i]) * 40 for i in range(4, 6)]


def test_a_full_disk_keeps_nothing_half_written_and_never_raises(tmp_path, monkeypatch) -> None:
    import errno

    spool = Spool(tmp_path, 1 << 20)
    real_write, calls = spool._tail.write, []

    def write(data):
        calls.append(len(data))
        if len(calls) == 3:
            real_write(data[:3])  # part of it reached the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(data)

    monkeypatch.setattr(spool._tail, "write", write, raising=False)
    assert spool.append([b"a", b"b", b"c", b"d"]) == 2
    monkeypatch.undo()
    assert spool.append([b"e"]) == 1
    records, _, _ = spool.peek(10)
    assert records == [b"a", b"b", b"e"] and spool.messages == 3


def test_a_record_larger_than_one_read_comes_back_whole(tmp_path) -> None:
    spool = Spool(tmp_path, 1 << 22)
    big = bytes(range(256)) * 1024  # 256 KiB
    spool.append([big, b"after"])
    assert spool.peek(10, most_bytes=1024)[0][0] == big
