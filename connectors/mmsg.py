"""recvmmsg for UDP sockets: many datagrams per system call, through ctypes.

Python's socket module reads one datagram per call and builds several objects for each
(the data, the address tuple, the ancillary list); at hundreds of thousands of datagrams per
second that is most of the inlet's time. Here the kernel fills preallocated arrays in one call
and the results are read with numpy, column by column, for the whole batch.

Linux x86-64/aarch64 layout (LP64): struct iovec is 16 bytes, struct mmsghdr 64 bytes.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket

import numpy as np

MMSGHDR = np.dtype({"names": ["name", "namelen", "iov", "iovlen", "control", "controllen",
                              "flags", "len"],
                    "formats": ["u8", "u4", "u8", "u8", "u8", "u8", "i4", "u4"],
                    "offsets": [0, 8, 16, 24, 32, 40, 48, 56], "itemsize": 64})
IOVEC = np.dtype([("base", "u8"), ("len", "u8")])
NAME_SIZE = 32          # room for a sockaddr_in6 (28 bytes)
CONTROL_SIZE = 64       # a timespec cmsg (32 bytes) and a u32 cmsg (24 bytes) fit
AF_INET, AF_INET6 = socket.AF_INET.value, socket.AF_INET6.value
SOL_SOCKET = socket.SOL_SOCKET
SO_TIMESTAMPNS = 35     # = SCM_TIMESTAMPNS
SO_RXQ_OVFL = 40
# Bytes of each slot kept once backed: a header and a jumbo datagram (9,216-byte MTU) fit;
# with 1024 slots at most 16 MiB per socket stays resident.
KEEP = 16384
_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


def _page_round(size: int) -> int:
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


class ReceiveRing:
    """`slots` receive slots, each `headroom` bytes then room for the largest datagram.

    The slots live in one anonymous mapping: pages are only backed once written, so a slot
    costs the memory of the datagrams it really held, up to `KEEP` bytes (see `release_large`).
    Row i of `rows` is slot i, the payload of datagram i starting at `headroom`: a header
    written there in place makes row[:headroom + length] the whole message, with no
    concatenation.
    """

    def __init__(self, slots: int, headroom: int, room: int = 65535) -> None:
        self.slots, self.headroom, self.room = slots, headroom, room
        self.stride = _page_round(headroom + room)
        self.keep = min(KEEP, self.stride)   # bytes of a slot that stay backed once written
        self.released = 0                    # slots whose tail pages were given back
        self.memory = mmap.mmap(-1, slots * self.stride)
        self.rows = np.frombuffer(self.memory, np.uint8).reshape(slots, self.stride)
        index = np.arange(slots, dtype=np.uint64)
        self.iov = np.zeros(slots, IOVEC)
        self.iov["base"] = self.rows.ctypes.data + index * self.stride + headroom
        self.iov["len"] = room
        self.names = np.zeros((slots, NAME_SIZE), np.uint8)
        self.control = np.zeros((slots, CONTROL_SIZE), np.uint8)
        self.headers = np.zeros(slots, MMSGHDR)
        self.headers["name"] = self.names.ctypes.data + index * NAME_SIZE
        self.headers["iov"] = self.iov.ctypes.data + index * IOVEC.itemsize
        self.headers["iovlen"] = 1
        self.headers["control"] = self.control.ctypes.data + index * CONTROL_SIZE
        self._vector = self.headers.ctypes.data
        # Field views made once: taking a field of a structured array costs a microsecond or
        # two each time, several times per read.
        self._namelen, self._controllen = self.headers["namelen"], self.headers["controllen"]
        self._len, self._flags = self.headers["len"], self.headers["flags"]
        self.starts = index.astype(np.int64) * self.stride   # offset of each row in `memory`

    def receive(self, fd: int, count: int) -> int:
        """Up to `count` datagrams without waiting; 0 when none is queued. Raises OSError."""
        self._namelen[:count] = NAME_SIZE      # the kernel writes the real sizes back
        self._controllen[:count] = CONTROL_SIZE
        got = _recvmmsg(fd, self._vector, count, socket.MSG_DONTWAIT, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in _AGAIN:
                return 0
            raise OSError(err, os.strerror(err))
        return got

    def lengths(self, count: int) -> np.ndarray:
        return self._len[:count].astype(np.int64)

    def truncated(self, count: int) -> np.ndarray:
        return (self._flags[:count] & socket.MSG_TRUNC) != 0

    def sources(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(exporter addresses as (n, 16) uint8, IPv4-mapped for IPv4; ports as (n, 2) uint8
        in network order)."""
        names = self.names[:count]
        family = names[:, 0].astype(np.uint16) | (names[:, 1].astype(np.uint16) << 8)
        addresses = names[:, 8:24].copy()             # sockaddr_in6.sin6_addr
        v4 = family == AF_INET
        if v4.any():
            addresses[v4, :12] = _V4_MAPPED
            addresses[v4, 12:] = names[v4, 4:8]       # sockaddr_in.sin_addr
        return addresses, names[:, 2:4]

    def ancillary(self, count: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Kernel receive times (ns; `has_time` False where the kernel gave none) and the
        highest SO_RXQ_OVFL drop count of the batch (the socket's cumulative count)."""
        length = self._controllen[:count].astype(np.int64)
        as32 = self.control[:count].view(np.int32)    # (n, 16)
        as64 = self.control[:count].view(np.int64)    # (n, 8)
        # At most two messages: SCM_TIMESTAMPNS (32 bytes) and SO_RXQ_OVFL (20, aligned 24).
        # The kernel writes the timestamp first; both orders are read to be safe.
        first = np.where((length >= 16) & (as32[:, 2] == SOL_SOCKET), as32[:, 3], 0)
        time_first = (first == SO_TIMESTAMPNS) & (length >= 32)
        drops_first = (first == SO_RXQ_OVFL) & (length >= 20)
        time_second = drops_first & (length >= 56) & (as32[:, 9] == SO_TIMESTAMPNS)
        drops_second = time_first & (length >= 52) & (as32[:, 11] == SO_RXQ_OVFL)
        received = np.where(time_first, as64[:, 2] * 1_000_000_000 + as64[:, 3],
                            as64[:, 5] * 1_000_000_000 + as64[:, 6])
        has_time = time_first | time_second
        drops = np.where(drops_first, as32[:, 4], np.where(drops_second, as32[:, 12], 0))
        return received, has_time, int(drops.astype(np.uint32).max(initial=0))

    def release_large(self, lengths: np.ndarray) -> int:
        """Give back the pages past `KEEP` bytes of the slots of a read whose datagram went
        past them (they refill on demand); returns how many slots. Jumbo datagrams (9,000 bytes
        and a header fit in KEEP) keep their pages, so a jumbo exporter costs no madvise nor
        page faults per datagram; a rare larger one must not pin up to 64 KiB per slot."""
        large = np.flatnonzero(lengths > self.keep - self.headroom)
        for slot in large.tolist():
            self.memory.madvise(mmap.MADV_DONTNEED, int(self.starts[slot]) + self.keep,
                                self.stride - self.keep)
        self.released += len(large)
        return len(large)
