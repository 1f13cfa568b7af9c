"""fanotify(7) permission events through ctypes: every exec of a file on a marked filesystem
(FAN_OPEN_EXEC_PERM, Linux 5.0), and every open of a marked file (FAN_OPEN_PERM: the shared libraries that
patches target), waits until this process answers it.

Own code, not a library: the fanotify wrappers on PyPI either refuse permission events (pyfanotify: "PERM
events are not supported yet"; it also runs its listener in a child process, which could not then be the
ptrace tracer) or predate FAN_OPEN_EXEC_PERM (butter, last released 2021). What is needed is two libc
calls, a fixed 24-byte event record and an 8-byte answer.

Every event is answered FAN_ALLOW: the daemon never refuses an exec or an open, it only makes it wait. The kernel
answers the events still pending with FAN_ALLOW when the group's descriptor is closed, so a daemon that
dies (even by SIGKILL) leaves no exec waiting.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT, FAN_REPORT_TID = 0x1, 0x2, 0x4, 0x100
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_OPEN_PERM, FAN_OPEN_EXEC_PERM = 0x10000, 0x40000
FAN_ALLOW = 0x1
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100
_EVENT = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid (a tid: REPORT_TID)
_RESPONSE = struct.Struct("=iI")  # fd, response
_READ_SIZE = 64 * _EVENT.size  # events taken per read; the rest wait in the kernel's queue
_MOUNTINFO_LIMIT = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


class Unavailable(Exception):
    """This kernel or this process cannot have exec permission events (why, in a few words)."""


@dataclass(frozen=True)
class Permission:
    """One exec or open waiting for an answer: `fd` the file being executed or opened (opened by the kernel
    for us), `tid` the thread that execs or opens it, `mask` FAN_OPEN_EXEC_PERM or FAN_OPEN_PERM."""
    fd: int
    tid: int
    mask: int

    @property
    def exec(self) -> bool:
        return bool(self.mask & FAN_OPEN_EXEC_PERM)


class Permissions:
    """A fanotify group of class content with FAN_OPEN_EXEC_PERM on every mounted filesystem, and
    FAN_OPEN_PERM on the files `mark_file` marks."""

    def __init__(self):
        fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID,
                                 os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
        if fd < 0:
            err = ctypes.get_errno()
            raise Unavailable({errno.EPERM: "fanotify needs CAP_SYS_ADMIN",
                               errno.ENOSYS: "the kernel has no fanotify",
                               errno.EINVAL: "the kernel has no FAN_REPORT_TID (Linux 4.20)"}.get(
                                   err, f"fanotify_init: {os.strerror(err)}"))
        self.fd = fd
        self.marked: set[int] = set()  # st_dev of each filesystem marked
        try:
            self.mark_filesystems()
        except BaseException:
            self.close()
            raise
        if not self.marked:
            self.close()
            raise Unavailable("no filesystem could be marked")

    def mark_filesystems(self) -> int:
        """Mark every mounted filesystem not marked yet (mounts come and go: called again when the mount table
        changes); returns how many were added. A filesystem that cannot be marked (a pseudo filesystem, one
        that disappeared meanwhile) is left out; a kernel without FAN_OPEN_EXEC_PERM is Unavailable."""
        added = 0
        for path in mount_points():
            try:
                dev = os.stat(path).st_dev
            except OSError:
                continue
            if dev in self.marked:
                continue
            if _libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC_PERM, AT_FDCWD,
                                   os.fsencode(path)) != 0:
                err = ctypes.get_errno()
                if err == errno.EINVAL and path == "/":
                    raise Unavailable("the kernel has no FAN_OPEN_EXEC_PERM (Linux 5.0)")
                continue
            self.marked.add(dev)
            added += 1
        return added

    def mark_file(self, path: str) -> None:
        """Every open of the file at `path` (its inode: a /proc/PID/map_files link marks the file mapped there)
        waits for an answer from now on; OSError when it cannot be marked."""
        if _libc.fanotify_mark(self.fd, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD, os.fsencode(path)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[Permission]:
        """The permission events queued now (none when there are none)."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        out, at = [], 0
        while at + _EVENT.size <= len(data):
            length, version, _, _, mask, fd, tid = _EVENT.unpack_from(data, at)
            if version != FANOTIFY_METADATA_VERSION or length < _EVENT.size:
                raise OSError(errno.EPROTO, f"fanotify event of version {version}, length {length}")
            if fd >= 0:
                out.append(Permission(fd, tid, mask))
            at += length
        return out

    def allow(self, event: Permission) -> None:
        """Let the exec or open go on; the event's descriptor is closed."""
        try:
            os.write(self.fd, _RESPONSE.pack(event.fd, FAN_ALLOW))
        finally:
            os.close(event.fd)

    def close(self) -> None:
        """Closing the group answers every event still pending with FAN_ALLOW (the kernel does)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def mount_points() -> list[str]:
    """The mount points of this mount namespace (/proc/self/mountinfo), in its order."""
    with open("/proc/self/mountinfo", "rb") as f:
        text = f.read(_MOUNTINFO_LIMIT)
    out = []
    for line in text.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:  # octal escapes for space, tab, newline, backslash
            out.append(os.fsdecode(fields[4].decode("unicode_escape").encode("latin-1")))
    return out
