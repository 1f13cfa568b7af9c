"""A process seen through /proc: its memory map and its memory (/proc/PID/mem)."""
from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

from patch_build.common.errors import InputError
from patch_build.loader.ptrace import ThreadGone, exited, live_thread_ids


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str  # "r-xp"
    offset: int
    inode: int
    path: str  # "" for anonymous memory

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end


def proc_dir(pid: int) -> str:
    """/proc/PID, or a live thread's directory when the main thread has exited: the process's memory and
    map are then no longer visible through the main thread's."""
    if exited(pid, pid):
        try:
            tids = live_thread_ids(pid)
        except ThreadGone:
            tids = []
        if tids:
            return f"/proc/{pid}/task/{tids[0]}"
    return f"/proc/{pid}"


def process_alive(pid: int) -> bool:
    """True while one of PID's threads has not exited (a zombie waiting for its parent has exited; a
    zombie main thread whose other threads run has not)."""
    try:
        return bool(live_thread_ids(pid))
    except ThreadGone:
        return False


def _thread_statuses(pid: int):
    """{field: value} of /proc/PID/task/TID/status for each thread that can still be read."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                yield dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue


def dying(pid: int) -> bool:
    """True when a thread of PID has SIGKILL pending (the process is on its way out), or none is left."""
    kill = 1 << (signal.SIGKILL - 1)
    found = False
    for status in _thread_statuses(pid):
        found = True
        if any(int(status.get(f, "0"), 16) & kill for f in ("SigPnd", "ShdPnd")):
            return True
    return not found


def tracer_of(pid: int) -> str | None:
    """'PID (comm)' of a process already tracing one of PID's threads (a debugger, another patch-ctl)."""
    for status in _thread_statuses(pid):
        tracer = int(status.get("TracerPid", "0"))
        if tracer and tracer != os.getpid():
            try:
                with open(f"/proc/{tracer}/comm") as f:
                    return f"{tracer} ({f.read().strip()})"
            except OSError:
                continue
    return None


def check_process(pid: int) -> None:
    """Raise InputError unless PID is a live process other than ourselves."""
    if pid <= 0 or not os.path.exists(f"/proc/{pid}/status"):
        raise InputError(f"no such process: {pid}")
    if pid == os.getpid():
        raise InputError(f"pid {pid} is patch-ctl itself")
    if not process_alive(pid):
        raise InputError(f"process {pid} has exited")


def read_maps(pid: int) -> list[Mapping]:
    try:
        with open(f"{proc_dir(pid)}/maps") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ThreadGone(pid) from None
    except PermissionError:
        raise InputError(f"cannot trace process {pid}: permission denied") from None
    maps = []
    for line in lines:
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        maps.append(Mapping(start, end, parts[1], int(parts[2], 16), int(parts[4]),
                            parts[5] if len(parts) > 5 else ""))
    return maps


class Memory:
    """Read and write another process's memory. Writes go through /proc/PID/mem, which (for a tracer
    or root) may write read-only code pages, copy-on-write, as debuggers do."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.fd = os.open(f"{proc_dir(pid)}/mem", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputError(f"no such process: {pid}") from None
        except PermissionError:
            raise InputError(f"cannot trace process {pid}: permission denied") from None

    def read(self, addr: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, addr)
        except OSError as e:
            raise self._error(e, "read", addr) from None
        if len(data) != size:
            raise self._error(OSError(errno.EIO, "short read"), "read", addr)
        return data

    def read_cstring(self, addr: int, limit: int) -> tuple[bytes, bool]:
        """The bytes of the NUL-terminated string at addr, at most `limit` of them, read page by page (never
        past the page where it ends: the next may be unmapped); and whether its end was found."""
        out = b""
        while len(out) < limit:
            chunk = self.read(addr + len(out), min(4096 - (addr + len(out)) % 4096, limit - len(out)))
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end], True
            out += chunk
        return out, False

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write(self, addr: int, data: bytes) -> None:
        try:
            n = os.pwrite(self.fd, data, addr)
        except OSError as e:
            raise self._error(e, "write", addr) from None
        if n != len(data):
            raise self._error(OSError(errno.EIO, "short write"), "write", addr)

    def _error(self, e: OSError, what: str, addr: int) -> Exception:
        if e.errno in (errno.ESRCH, errno.EIO) and not process_alive(self.pid):
            return ThreadGone(self.pid)
        return OSError(e.errno, f"cannot {what} memory of process {self.pid} at {addr:#x}: {e.strerror}")

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
