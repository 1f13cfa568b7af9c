"""Reading an input file with a bound: a regular file of at most a given size, or a one-line InputError.

patch-diff, patch-report and patch-ctl read their input files through here, so that a FIFO cannot hang
them, a character device such as /dev/zero cannot exhaust their memory, and a huge file is refused before
it is read.
"""
from __future__ import annotations

import os
import stat

from patch_build.common.errors import InputError

MIB = 1 << 20

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def read_input(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The contents of `path`, `what` it should be (e.g. "object file") naming it in errors; InputError
    unless it is a readable regular file of at most `limit` bytes."""
    name = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below, unread).
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"{name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            raise InputError(f"{name}: is {kind}, not a regular file ({what} expected)")
        if st.st_size > limit:
            raise InputError(f"{name}: {what} too large ({st.st_size:,} bytes; the limit is {limit:,})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            # Its size, and a byte more to see it grow: read(n) allocates n bytes up front.
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:
                data += f.read(limit + 1 - len(data))
    except OSError as e:
        raise InputError(f"{name}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise InputError(f"{name}: {what} too large (more than the limit of {limit:,} bytes)")
    return data
