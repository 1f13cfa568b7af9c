"""System calls run by a stopped thread of the target, its registers saved and restored.

The thread is pointed at a `syscall` instruction already present in the target (the vDSO has some, libc
many) with orig_rax = -1, so the kernel does not treat the stop as an interrupted call to restart, and
single-stepped over it. Restoring the saved registers afterwards lets an interrupted call restart as usual.
"""
from __future__ import annotations

import errno
import os

from loader.procfs import Mapping, Memory
from loader.ptrace import Regs, Thread

SYSCALL_INSN = b"\x0f\x05"
SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_CLOSE, SYS_FTRUNCATE, SYS_MEMFD_CREATE = 9, 10, 11, 3, 77, 319
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_FIXED_NOREPLACE = 0x02, 0x100000
MFD_CLOEXEC = 1
_SCAN_LIMIT = 1 << 22


class RemoteError(OSError):
    pass


def find_syscall_insn(mem: Memory, maps: list[Mapping]) -> int:
    """The address of a `syscall` instruction (bytes 0f 05) in executable memory: the vDSO first."""
    ordered = sorted((m for m in maps if m.executable and m.perms[0] == "r" and m.path != "[vsyscall]"),
                     key=lambda m: m.path != "[vdso]")
    for m in ordered:
        for at in range(m.start, min(m.end, m.start + _SCAN_LIMIT), 1 << 16):
            chunk = mem.read(at, min(1 << 16, m.end - at))
            i = chunk.find(SYSCALL_INSN)
            if i >= 0 and at + i + 2 <= m.end:
                return at + i
    raise RemoteError(errno.ENOEXEC, "no syscall instruction found in the target's code")


class RemoteCaller:
    """Run system calls in `thread` (stopped, registers saved in thread.regs) until `restore()`."""

    def __init__(self, thread: Thread, mem: Memory, syscall_addr: int):
        self.thread = thread
        self.mem = mem
        self.syscall_addr = syscall_addr
        self.saved = thread.regs.copy()
        self.dirty = False

    def call(self, nr: int, *args: int) -> int:
        regs: Regs = self.saved.copy()
        regs.rax = nr
        regs.orig_rax = (1 << 64) - 1
        regs.rip = self.syscall_addr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & ((1 << 64) - 1))
        self.dirty = True
        self.thread.set_regs(regs)
        for _ in range(8):  # a signal-delivery stop before the step is kept for later and the step redone
            self.thread.single_step()
            done = self.thread.get_regs()
            if done.rip == self.syscall_addr + len(SYSCALL_INSN):
                break
            self.thread.set_regs(regs)
        else:
            raise RemoteError(errno.EINTR, "the target did not complete a system call")
        result = done.rax if done.rax < (1 << 63) else done.rax - (1 << 64)
        if -4096 < result < 0:
            raise RemoteError(-result, os.strerror(-result))
        return result

    def scratch_string(self, text: str) -> int:
        """Put a NUL-terminated string in unused stack below the red zone; valid until the next call."""
        data = text.encode() + b"\0"
        addr = (self.saved.rsp - 1024 - len(data)) & ~15
        self.mem.write(addr, data)
        return addr

    def restore(self) -> None:
        if self.dirty:
            self.thread.set_regs(self.saved)
            self.dirty = False

    # the calls patch-ctl needs
    def map_named(self, name: str, addr: int, size: int) -> int:
        """Map `size` bytes read+write at exactly `addr`, backed by a memfd called `name` (so the mapping
        carries that name in /proc/PID/maps and never merges with its neighbours)."""
        fd = self.call(SYS_MEMFD_CREATE, self.scratch_string(name), MFD_CLOEXEC)
        try:
            self.call(SYS_FTRUNCATE, fd, size)
            return self.call(SYS_MMAP, addr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0)
        finally:
            self.call(SYS_CLOSE, fd)

    def mprotect(self, addr: int, size: int, prot: int) -> None:
        self.call(SYS_MPROTECT, addr, size, prot)

    def munmap(self, addr: int, size: int) -> None:
        self.call(SYS_MUNMAP, addr, size)
