"""How datagrams of one listener are spread over the sockets of all workers.

Modes, best first (`inlet.balancing: auto` takes the first that works):

- ebpf: bpf/reuseport.c, compiled with bcc, picks the sockets round-robin from a
  REUSEPORT_SOCKARRAY map pinned in bpffs (one per listener), where each worker of the
  cluster, in whichever process, puts its socket at its global worker index.
- cbpf: a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) returning a random index into the
  reuseport group: no bcc, no privilege, an even spread on average.
- hash: the kernel's default 4-tuple hash, which sends everything from one exporter socket to
  one worker.

Each process compiles and attaches the program once per listener; every socket joins the map.
A pinned map outlives the processes, so it is removed by whoever leaves it empty: each process
on a clean stop, once its sockets are closed (`ListenerGroup.release`), and `waxflow bpf clean`
for what a killed process left behind (`clean`). Checking a map for sockets and unpinning it,
and opening or creating a map and putting a socket in, happen under a lock on the pin
directory (`pins_locked`): an inlet starting meanwhile never joins a map that then goes away.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib.util
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bpf import syscall

log = logging.getLogger(__name__)

MODES = ("ebpf", "cbpf", "hash")

SO_ATTACH_REUSEPORT_CBPF = 51
SO_ATTACH_REUSEPORT_EBPF = 52
BPF_PROG_TYPE_SK_REUSEPORT = 21

PROGRAM_SOURCE = Path(__file__).with_name("reuseport.c")
SYSTEM_BCC = Path("/usr/lib/python3/dist-packages/bcc")
# The kernel header tree scripts/setup-ebpf.sh builds when /lib/modules has none.
PROJECT_HEADERS = Path("/usr/src/waxflow-kernel-headers")


class BalancingError(RuntimeError):
    """The requested balancing mode cannot be set up (the message says why)."""


# --- classic BPF -----------------------------------------------------------------------------

class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM: a random u32


def random_spread_program(sockets: int) -> list[tuple[int, int, int, int]]:
    """A = random; A %= sockets; return A  (the index into the reuseport group)."""
    return [(0x20, 0, 0, _SKF_AD_RANDOM),   # BPF_LD | BPF_W | BPF_ABS
            (0x94, 0, 0, sockets),          # BPF_ALU | BPF_MOD | BPF_K
            (0x16, 0, 0, 0)]                # BPF_RET | BPF_A


def attach_cbpf(sock: socket.socket, sockets: int) -> None:
    instructions = random_spread_program(sockets)
    filters = (_SockFilter * len(instructions))(*[_SockFilter(*i) for i in instructions])
    prog = _SockFprog(len(instructions), filters)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(prog))


# --- eBPF through bcc --------------------------------------------------------------------------

def import_bcc() -> ModuleType:
    """bcc from the venv if it is there, else Debian's python3-bpfcc, without putting all of
    /usr/lib/python3/dist-packages on sys.path (it would shadow the venv's packages)."""
    if "bcc" in sys.modules:
        return sys.modules["bcc"]
    try:
        import bcc  # type: ignore[import-not-found]
        return bcc
    except ImportError:
        pass
    init = SYSTEM_BCC / "__init__.py"
    if not init.exists():
        raise BalancingError("bcc is not installed (Debian: apt-get install python3-bpfcc)")
    spec = importlib.util.spec_from_file_location("bcc", init,
                                                  submodule_search_locations=[str(SYSTEM_BCC)])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules["bcc"]
        raise BalancingError(f"bcc does not load: {err}") from err
    return module


def kernel_headers() -> str | None:
    """Point bcc at a kernel header tree: $BCC_KERNEL_SOURCE, the running kernel's, or the
    tree scripts/setup-ebpf.sh builds. Returns the tree used (None: bcc's own search)."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return os.environ["BCC_KERNEL_SOURCE"]
    if Path(f"/lib/modules/{os.uname().release}/build/include").is_dir():
        return None
    if (PROJECT_HEADERS / "include" / "linux" / "kconfig.h").exists():
        os.environ["BCC_KERNEL_SOURCE"] = str(PROJECT_HEADERS)
        return str(PROJECT_HEADERS)
    raise BalancingError(f"no kernel headers for {os.uname().release} (run "
                         f"scripts/setup-ebpf.sh as root, or set BCC_KERNEL_SOURCE)")


_compile_lock = threading.Lock()  # bcc/clang compiles are not safe to run concurrently


def load_program(map_fd: int, workers: int) -> tuple[Any, int]:
    """Compile and load reuseport.c for one socket map; (bcc object to keep alive, prog fd)."""
    bcc = import_bcc()
    kernel_headers()
    text = PROGRAM_SOURCE.read_text()
    cflags = [f"-DSOCKARRAY_FD={map_fd}", f"-DWORKERS={workers}"]
    with _compile_lock:
        try:
            program = bcc.BPF(text=text.encode(), cflags=cflags)
            function = program.load_func(b"select_socket", BPF_PROG_TYPE_SK_REUSEPORT)
        except Exception as err:  # bcc raises bare Exception for compile and load errors
            raise BalancingError(f"eBPF program does not load: {err}") from err
    return program, function.fd


def pin_path(bpffs: Path, key: str, workers: int) -> Path:
    # bpffs refuses dots in names.
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
    return bpffs / f"{safe}_w{workers}"


@contextmanager
def pins_locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the pin directory, across processes (bpffs holds no regular
    files, so the directory itself is the lock). Raises FileNotFoundError when it is gone."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the lock


def _pin_directory(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BalancingError(f"cannot create {path.parent} (is bpffs mounted at "
                             f"{path.parent.parent}?): {err.strerror}") from err


def shared_socket_map(path: Path, workers: int) -> int:
    """The listener's socket map: the pinned one if a process of the cluster made it already,
    else a new one pinned at `path`. Returns an fd."""
    for _ in range(3):
        _pin_directory(path)
        try:
            with pins_locked(path.parent):
                return _open_or_create(path, workers)
        except FileNotFoundError:
            continue   # `waxflow bpf clean` removed the empty directory meanwhile
    raise BalancingError(f"cannot settle on a socket map at {path}")


def _open_or_create(path: Path, workers: int) -> int:
    """Under the pin lock: open the pinned map, or replace what is not ours, or create one."""
    try:
        fd = syscall.open_pinned(str(path))
    except syscall.BPFError as err:
        if err.errno != errno.ENOENT:
            raise BalancingError(f"cannot open {path}: {err.strerror}") from err
    else:
        if syscall.map_info(fd) == (syscall.BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, workers):
            return fd
        os.close(fd)
        path.unlink(missing_ok=True)  # not ours (or from an older layout): replace it
    try:
        fd = syscall.create_socket_array(workers)
    except syscall.BPFError as err:
        raise BalancingError(f"cannot create the socket map: {err.strerror}") from err
    try:
        syscall.pin(fd, str(path))
    except syscall.BPFError as err:
        os.close(fd)
        raise BalancingError(f"cannot pin the socket map at {path}: {err.strerror} "
                             f"(is bpffs mounted?)") from err
    return fd


def join_pinned_map(path: Path, map_fd: int, index: int, socket_fd: int) -> bool:
    """Put a socket in our map at `index` if the map is still the one pinned at `path`, under
    the pin lock. Our map may have been unpinned as unused between opening it and now (while
    the program compiled): it is pinned again, and holds a socket before the lock is let go.
    False when another process pinned a new map there meanwhile: the caller must use that
    one (a socket can sit in one socket map only, so nothing is put in ours)."""
    _pin_directory(path)
    with pins_locked(path.parent):
        try:
            fd = syscall.open_pinned(str(path))
        except syscall.BPFError as err:
            if err.errno != errno.ENOENT:
                raise BalancingError(f"cannot open {path}: {err.strerror}") from err
            syscall.pin(map_fd, str(path))
        else:
            try:
                if syscall.map_id(fd) != syscall.map_id(map_fd):
                    return False
            finally:
                os.close(fd)
        syscall.put_socket(map_fd, index, socket_fd)
        return True


def unused(fd: int) -> bool:
    """A socket map none of whose slots holds a socket (every process using it has stopped)."""
    _map_type, entries = syscall.map_info(fd)
    return not any(syscall.holds_socket(fd, index) for index in range(entries))


def remove_if_unused(path: Path) -> bool:
    """Unpin the socket map at `path` when no socket uses it; True when removed. Under the pin
    lock: no process can open the map and put its socket in between the check and the unlink."""
    try:
        with pins_locked(path.parent):
            try:
                fd = syscall.open_pinned(str(path))
            except syscall.BPFError:
                return False   # gone already, or not a bpf object
            try:
                if (syscall.map_info(fd)[0] != syscall.BPF_MAP_TYPE_REUSEPORT_SOCKARRAY
                        or not unused(fd)):
                    return False
            finally:
                os.close(fd)
            path.unlink(missing_ok=True)
            return True
    except FileNotFoundError:
        return False   # the directory is gone, and the map with it


def clean(bpffs: Path) -> tuple[list[Path], list[Path]]:
    """Remove the unused socket maps pinned under `bpffs` (and the directory once empty).
    Returns (removed, kept because in use)."""
    removed, kept = [], []
    if not bpffs.is_dir():
        return removed, kept
    for path in sorted(bpffs.iterdir()):
        (removed if remove_if_unused(path) else kept).append(path)
    try:
        bpffs.rmdir()
    except OSError:
        pass   # not empty: maps in use, or files that are not ours
    return removed, kept


# --- one listener's group, per process -----------------------------------------------------------

@dataclass
class ListenerGroup:
    """The balancing of one listener in this process, set up by its first socket."""

    key: str
    workers: int
    requested: str
    bpffs: Path
    mode: str = ""
    reason: str = ""  # why a better mode is not active
    path: Path | None = None   # the pinned socket map (ebpf)
    map_fd: int = -1
    prog_fd: int = -1
    _program: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _setup(self) -> None:
        reasons = []
        if self.requested in ("auto", "ebpf"):
            try:
                self.path = pin_path(self.bpffs, self.key, self.workers)
                self.map_fd = shared_socket_map(self.path, self.workers)
                self._program, self.prog_fd = load_program(self.map_fd, self.workers)
                self.mode = "ebpf"
                return
            except (BalancingError, OSError) as err:
                if self.requested == "ebpf":
                    raise BalancingError(f"eBPF balancing requested but unavailable: {err}") from err
                reasons.append(f"ebpf: {err}")
        if self.requested in ("auto", "cbpf"):
            self.mode = "cbpf"
        else:
            self.mode = "hash"
        self.reason = "; ".join(reasons)

    def join(self, sock: socket.socket, worker_index: int) -> str:
        """Add a bound SO_REUSEPORT socket; return the active mode."""
        with self._lock:
            for _ in range(3):
                if not self.mode:
                    self._setup()
                if self.mode != "ebpf" or join_pinned_map(self.path, self.map_fd,
                                                          worker_index, sock.fileno()):
                    break
                self._reset()   # another map replaced ours in bpffs: set up again on that one
            else:
                raise BalancingError(f"cannot settle on a socket map at {self.path}")
            if self.mode == "ebpf":
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, self.prog_fd)
            elif self.mode == "cbpf":
                try:
                    attach_cbpf(sock, self.workers)
                except OSError as err:
                    if self.requested == "cbpf":
                        raise BalancingError(f"classic BPF balancing unavailable: {err}") from err
                    self.reason += f"; cbpf: {err}"
                    self.mode = "hash"
            return self.mode

    def _reset(self) -> None:
        if self.map_fd >= 0:
            os.close(self.map_fd)
        self.map_fd, self.mode, self._program = -1, "", None

    def release(self) -> None:
        """After this process closed sockets of the group: unpin the map once no socket of
        the cluster uses it any more (the last process to stop removes it)."""
        with self._lock:
            if self.mode == "ebpf" and self.path is not None and remove_if_unused(self.path):
                log.info("removed the unused socket map %s", self.path)
                _forget(self)


_groups: dict[tuple[str, str, int], ListenerGroup] = {}
_groups_lock = threading.Lock()


def group_for(key: str, workers: int, requested: str, bpffs: Path) -> ListenerGroup:
    """This process's balancing state for one listener (shared by its workers' sockets)."""
    if requested not in MODES + ("auto",):
        raise BalancingError(f"unknown balancing mode {requested!r}")
    with _groups_lock:
        group = _groups.get((key, requested, workers))
        if group is None:
            group = _groups[(key, requested, workers)] = ListenerGroup(key, workers, requested,
                                                                       bpffs)
        return group


def _forget(group: ListenerGroup) -> None:
    """Drop a group whose map is gone: a later listener on the same key starts afresh."""
    with _groups_lock:
        if _groups.get((group.key, group.requested, group.workers)) is group:
            del _groups[(group.key, group.requested, group.workers)]
    group._reset()
