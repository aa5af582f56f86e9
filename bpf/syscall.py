"""The few bpf(2) commands the loader needs, through ctypes (no bcc required for these).

bcc 0.26 cannot declare a BPF_MAP_TYPE_REUSEPORT_SOCKARRAY map in C, and a map shared by
several processes has to be pinned in bpffs anyway, so the socket array is created, pinned,
opened and filled here; the eBPF program then refers to it by file descriptor.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351,
           "riscv64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15

BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20
BPF_ANY = 0

_ATTR_SIZE = 128  # larger than every attribute struct used here; the rest stays zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BPFError(OSError):
    """A bpf(2) command failed; errno tells why (EPERM: no CAP_BPF, ENOENT: no such pin...)."""


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    number = _NR_BPF.get(platform.machine())
    if number is None:
        raise BPFError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr,
                           ctypes.c_uint(ctypes.sizeof(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise BPFError(err, os.strerror(err))
    return result


def _attr(*fields: tuple[int, type, int]) -> ctypes.Array:
    """A zeroed attribute buffer with (offset, ctype, value) fields written in."""
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    for offset, ctype, value in fields:
        ctype.from_buffer(buf, offset).value = value
    return buf


def create_socket_array(max_entries: int, name: str = "waxflow_socks") -> int:
    """A REUSEPORT_SOCKARRAY map (u32 index → socket, 8-byte fd values); returns its fd."""
    buf = _attr((0, ctypes.c_uint32, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY),
                (4, ctypes.c_uint32, 4),               # key_size
                (8, ctypes.c_uint32, 8),               # value_size
                (12, ctypes.c_uint32, max_entries))
    encoded = name.encode()[:15]
    ctypes.memmove(ctypes.addressof(buf) + 28, encoded, len(encoded))  # map_name[16]
    return _bpf(BPF_MAP_CREATE, buf)


def put_socket(map_fd: int, index: int, socket_fd: int) -> None:
    """Place a bound SO_REUSEPORT socket at `index` (replacing what was there)."""
    key = ctypes.c_uint32(index)
    value = ctypes.c_uint64(socket_fd)
    _bpf(BPF_MAP_UPDATE_ELEM, _attr((0, ctypes.c_uint32, map_fd),
                                    (8, ctypes.c_uint64, ctypes.addressof(key)),
                                    (16, ctypes.c_uint64, ctypes.addressof(value)),
                                    (24, ctypes.c_uint64, BPF_ANY)))


def holds_socket(map_fd: int, index: int) -> bool:
    """Whether a socket sits at `index` of a socket array (the kernel takes a socket out of
    the map when it closes, so a map whose sockets all closed is empty)."""
    key = ctypes.c_uint32(index)
    cookie = ctypes.c_uint64()   # a lookup from user space returns the socket's cookie
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _attr((0, ctypes.c_uint32, map_fd),
                                        (8, ctypes.c_uint64, ctypes.addressof(key)),
                                        (16, ctypes.c_uint64, ctypes.addressof(cookie))))
    except BPFError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def pin(fd: int, path: str) -> None:
    """Pin a map or program at `path` in bpffs (EEXIST when something is already there)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _attr((0, ctypes.c_uint64, ctypes.addressof(name)),
                            (8, ctypes.c_uint32, fd)))


def open_pinned(path: str) -> int:
    """A new fd for the object pinned at `path` (ENOENT when nothing is pinned there)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _attr((0, ctypes.c_uint64, ctypes.addressof(name))))


def _map_info(fd: int) -> ctypes.Array:
    """The kernel's struct bpf_map_info of a map fd."""
    info = ctypes.create_string_buffer(80)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _attr((0, ctypes.c_uint32, fd),
                                       (4, ctypes.c_uint32, ctypes.sizeof(info)),
                                       (8, ctypes.c_uint64, ctypes.addressof(info))))
    return info


def map_info(fd: int) -> tuple[int, int]:
    """(map type, max_entries) of a map fd, to check that a pinned map is the one we expect."""
    info = _map_info(fd)
    return ctypes.c_uint32.from_buffer(info, 0).value, ctypes.c_uint32.from_buffer(info, 16).value


def map_id(fd: int) -> int:
    """The kernel's id of the map behind an fd: two fds are the same map when ids match."""
    return ctypes.c_uint32.from_buffer(_map_info(fd), 4).value
