"""What one hostile exporter can cost the decoder: worst-case CPU and rows per datagram, and
memory, for the floods that found the limits (flows/decode/limits.py), next to the decode rate
of an ordinary input in the same run.

    .venv/bin/python bench/hostile.py [--rounds 5]

CPU time (time.process_time), best of --rounds; RSS from /proc/self/status.
"""

from __future__ import annotations

import argparse
import pickle
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.decode import ExporterState, decode_many  # noqa: E402

EXPORT = 1_700_000_000


def _ipfix(sets: bytes) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(sets), EXPORT, 0, 1) + sets


def _set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def _template(tid: int, fields: list[tuple[int, int]]) -> bytes:
    return _set(2, struct.pack("!HH", tid, len(fields)) + b"".join(struct.pack("!HH", ie, n) for ie, n in fields))


def _v9(sets: bytes) -> bytes:
    return struct.pack("!HHIIII", 9, 1, 10_000, EXPORT, 0, 1) + sets


def floods() -> dict[str, list[bytes]]:
    rng = random.Random(15)
    tiny = _template(401, [(1, 4)])
    return {
        "v9: 16,000 empty sets (64 KB)": [_v9(struct.pack("!HH", 300, 4) * 16_000)],
        "IPFIX: 16,000 4-byte records": [_ipfix(tiny + _set(401, struct.pack("!I", 7) * 16_000))],
        "IPFIX: 1-byte records (64 KB)": [_ipfix(_template(402, [(4, 1)]) + _set(402, bytes(60_000)))],
        "IPFIX: a 16,000-field template": [_ipfix(_template(403, [(1, 4)] * 16_000))],
        "IPFIX: 8,000 new templates": [_ipfix(_set(2, b"".join(struct.pack("!HHHH", 256 + i, 1, 1, 4)
                                                             for i in range(8_000))))],
        # sampled-packet records (IE 315, variable length): empty ones, then 4-byte frames
        "IPFIX: empty IE 315 records (64 KB)": [_ipfix(_template(404, [(315, 65535)]) + _set(404, bytes(60_000)))],
        "IPFIX: 4-byte IE 315 records (64 KB)": [_ipfix(_template(405, [(315, 65535)])
                                                       + _set(405, b"\x03\x45\x00\x00" * 15_000))],
        "v5 header on random bytes": [b"\x00\x05" + rng.randbytes(1400)],
        "sFlow: 8,000 empty samples": [struct.pack("!IIIIIII", 5, 1, 0x0A000001, 0, 1, 1000, 8_000)
                                       + struct.pack("!II", 1, 0) * 8_000],
    }


def ordinary(n: int = 1000) -> list[bytes]:
    fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (10, 4), (14, 4), (22, 4), (21, 4)]
    template = _template(500, fields)
    record = (bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + struct.pack("!HHBQQIIII", 1234, 443, 6, 1500, 3,
                                                                         1, 2, 1000, 2000))
    return [_ipfix(template + _set(500, record * 30)) for _ in range(n)]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def best_cpu(datagrams: list[bytes], rounds: int) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(rounds):
        state = ExporterState("198.51.100.60")
        begin = time.process_time()
        rows = decode_many(state, [(d, "x", EXPORT) for d in datagrams]).num_rows
        best = min(best, time.process_time() - begin)
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    normal = ordinary()
    decode_many(ExporterState("198.51.100.60"), [(d, "x", EXPORT) for d in normal[:10]])  # warm up
    seconds, rows = best_cpu(normal, args.rounds)
    print(f"hostile-exporter benchmark: CPU time, best of {args.rounds}")
    print(f"ordinary IPFIX (30 flows/datagram): {rows / seconds:,.0f} flows/s, "
          f"{1000 * seconds / len(normal):.3f} ms per datagram")
    print(f"{'flood (one datagram)':36} {'ms':>8} {'rows':>7}")
    for name, datagrams in floods().items():
        seconds, rows = best_cpu(datagrams, args.rounds)
        print(f"{name:36} {1000 * seconds:8.3f} {rows:7d}")
    # memory: one exporter sending 281 datagrams of 8,000 new one-field templates each
    before = rss_kib()
    state = ExporterState("198.51.100.61")
    for n in range(281):
        body = b"".join(struct.pack("!HHHH", 256 + (n * 8000 + i) % 65000, 1, 1, 4) for i in range(8_000))
        decode_many(state, [(_ipfix(_set(2, body)), "x", EXPORT)])
    print(f"281 datagrams x 8,000 new templates: RSS +{(rss_kib() - before) / 1024:.1f} MiB, "
          f"{len(state.templates)} templates kept, snapshot {len(pickle.dumps(state)) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
