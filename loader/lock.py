"""One patch-ctl at a time per target process: an advisory lock the kernel drops when its holder exits,
even by SIGKILL. Holding it also proves that a record left half-done in the target belongs to no running
patch-ctl, so it can be finished (loader.recovery)."""
from __future__ import annotations

import fcntl
import os
import time

from patch_build.common.errors import InputError

LOCK_DIRS = ("/run/lock/patch-ctl", "/tmp/patch-ctl")
POLL = 0.05


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat): a reused PID gets another lock."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "0"


def _lock_path(pid: int) -> str:
    for d in LOCK_DIRS:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return f"{d}/{pid}-{_start_time(pid)}.lock"
    raise InputError(f"no writable directory for patch-ctl's lock ({', '.join(LOCK_DIRS)})")


class TargetLock:
    def __init__(self, pid: int, wait: float | None):
        """wait: seconds to wait for another patch-ctl to finish; None: do not wait (acquired is False)."""
        self.pid = pid
        self.fd = os.open(_lock_path(pid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.acquired = False
        deadline = time.monotonic() + (wait or 0)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.acquired = True
                return
            except BlockingIOError:
                if wait is None:
                    return
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise InputError(f"another patch-ctl is working on process {pid}; try again") from None
                time.sleep(POLL)

    def close(self) -> None:
        os.close(self.fd)  # releases the lock
