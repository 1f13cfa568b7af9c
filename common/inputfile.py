"""Reading an input file with a bound: a regular file of at most a given size, or a one-line InputError.

patch-diff, patch-report and patch-ctl read their input files through here, so that a FIFO cannot hang
them, a character device such as /dev/zero cannot exhaust their memory, and a huge file is refused before
it is read. A file can also be read a part at a time (`open_input`), a part again later (`InputFile`), refused
if the file has changed meanwhile.
"""
from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from patch_build.common.errors import InputError

MIB = 1 << 20

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


@dataclass(frozen=True)
class InputFile:
    """An input file that is read a part at a time, as its parts are asked for (`open_input`), so that what is
    never used is never read: refused when it is no longer the file it was when first opened."""
    path: str
    what: str
    identity: tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns when first opened

    def read_part(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (within the file as it was: the caller checked), read from the file opened
        anew. With pread, not from a mapping: a file truncated meanwhile gives a short read (InputError), where
        a mapping would kill the process with SIGBUS."""
        with open_input(self.path, self.what, sys.maxsize, self.identity) as (parts, _):
            return parts[offset:offset + size]


class FileBytes:
    """The bytes of an open file, as far as `bytes` is used to read an ELF file (its length, a byte, a slice),
    each read with pread when asked for. A part the file no longer holds (it shrank) is an InputError."""

    def __init__(self, fd: int, name: str, size: int):
        self._fd, self._name, self._size = fd, name, size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, int):
            if not 0 <= key < self._size:
                raise IndexError("index out of range")
            return self[key:key + 1][0]
        start, stop, step = key.indices(self._size)
        if step != 1:
            raise ValueError("only contiguous parts of a file are read")
        if stop <= start:
            return b""
        try:
            data = os.pread(self._fd, stop - start, start)
        except OSError as e:
            raise InputError(f"{self._name}: {e.strerror}") from None
        if len(data) != stop - start:
            raise InputError(f"{self._name}: changed while it was being read (it is shorter now)")
        return data


@contextlib.contextmanager
def open_input(path: str | os.PathLike, what: str, limit: int,
               identity: tuple[int, int, int, int] | None = None) -> Iterator[tuple[FileBytes, InputFile]]:
    """`path` open for reading parts of it (`FileBytes`), with what reads parts again once it is closed;
    InputError as `read_input`, and when it changes while open or is not the file of `identity`."""
    name = os.fspath(path)
    fd, st = _open_regular(name, what, limit)
    try:
        source = InputFile(name, what, _identity(st))
        if identity is not None and source.identity != identity:
            raise InputError(f"{name}: changed while it was being read (it was modified or replaced)")
        yield FileBytes(fd, name, st.st_size), source
        try:
            if _identity(os.fstat(fd)) != source.identity:
                raise InputError(f"{name}: changed while it was being read (it was modified)")
        except OSError as e:
            raise InputError(f"{name}: {e.strerror}") from None
    finally:
        os.close(fd)


def read_input(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The contents of `path`, `what` it should be (e.g. "object file") naming it in errors; InputError
    unless it is a readable regular file of at most `limit` bytes."""
    name = os.fspath(path)
    fd, st = _open_regular(name, what, limit)
    try:
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


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _open_regular(name: str, what: str, limit: int) -> tuple[int, os.stat_result]:
    """An open descriptor of `name` and its status; InputError unless it is a regular file of at most `limit`
    bytes."""
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
    except BaseException:
        os.close(fd)
        raise
    return fd, st
