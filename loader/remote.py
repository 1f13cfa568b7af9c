"""System calls and function calls run by a stopped thread of the target, its registers saved and restored.

For a system call the thread is pointed at a `syscall` instruction already present in the target (the vDSO
has some, libc many) with orig_rax = -1, so the kernel does not treat the stop as an interrupted call to
restart, and single-stepped over it. A function call runs the thread on its own stack, well below what it
uses, with a return address of 0: the fault of that return ends the call; its vector registers are saved
too. Restoring the saved registers afterwards lets an interrupted call restart as usual.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from patch_build.loader import faults
from patch_build.loader.procfs import Mapping, Memory
from patch_build.loader.ptrace import NotStopping, Regs, Thread

SYSCALL_INSN = b"\x0f\x05"
SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_CLOSE, SYS_FTRUNCATE, SYS_MEMFD_CREATE = 9, 10, 11, 3, 77, 319
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
MFD_CLOEXEC = 1
_SCAN_LIMIT = 1 << 22
CALL_LIMIT = 5.0  # seconds a called function may take: longer, it is blocked (on a lock) and abandoned
_CALL_STACK_GAP = 4096  # the called function's stack starts this far below the thread's (past its red zone)
_EFLAGS_DF = 1 << 10  # the direction flag, clear at every call (the ABI)


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
    """Run system calls and functions in `thread` (stopped, registers saved in thread.regs) until `restore()`."""

    def __init__(self, thread: Thread, mem: Memory, syscall_addr: int):
        self.thread = thread
        self.mem = mem
        self.pid = mem.pid
        self.syscall_addr = syscall_addr
        self.saved = thread.regs.copy()
        self.saved_fp: tuple[int, bytes] | None = None  # saved before the first function call
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
        # Back to the thread's own registers after every call, not once at the end: should patch-ctl be
        # killed between two calls, the thread resumes where it was stopped.
        self.thread.set_regs(self.saved)
        faults.point("remote-call", self.pid)
        result = done.rax if done.rax < (1 << 63) else done.rax - (1 << 64)
        if -4096 < result < 0:
            raise RemoteError(-result, os.strerror(-result))
        return result

    def call_function(self, func: int, *args: int, limit: float = CALL_LIMIT) -> int:
        """Run func(*args) (integer arguments) in the thread, the others running on; returns its rax.
        Raises RemoteError when it faults or does not return within `limit` seconds."""
        if self.saved_fp is None:
            self.saved_fp = self.thread.get_fpstate()
        regs: Regs = self.saved.copy()
        sp = ((self.saved.rsp - _CALL_STACK_GAP) & ~15) - 8  # 16-byte aligned before the call pushed
        self.mem.write(sp, bytes(8))  # the return address: 0
        regs.rsp, regs.rip, regs.rax = sp, func, 0
        regs.orig_rax = (1 << 64) - 1
        regs.eflags &= ~_EFLAGS_DF
        for name, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args):
            setattr(regs, name, value & ((1 << 64) - 1))
        self.dirty = True
        self.thread.set_regs(regs)
        pending = self.thread.pending_signal
        deadline = time.monotonic() + limit
        while True:
            self.thread.cont()
            try:
                sig = self.thread.wait_stop(max(deadline - time.monotonic(), 0.0))
            except NotStopping:
                self.thread.interrupt()
                self.thread.wait_stop()
                self.thread.pending_signal = pending
                raise RemoteError(errno.ETIMEDOUT, f"a function called in thread {self.thread.tid} did not "
                                                   f"return within {limit:g} s") from None
            if sig == signal.SIGSEGV:
                done = self.thread.get_regs()
                self.thread.pending_signal = pending  # our fault, never delivered
                if done.rip == 0 and done.rsp == sp + 8:
                    self.restore()  # as after a system call: the thread's own state between two calls
                    faults.point("remote-call", self.pid)
                    return done.rax
                raise RemoteError(errno.EFAULT, f"a function called in thread {self.thread.tid} faulted at "
                                                f"{done.rip:#x}")
            pending = self.thread.pending_signal  # another signal: delivered on detach; the call runs on

    def scratch_string(self, text: str) -> int:
        """Put a NUL-terminated string in unused stack below the red zone; valid until the next call."""
        data = text.encode() + b"\0"
        addr = (self.saved.rsp - 1024 - len(data)) & ~15
        self.mem.write(addr, data)
        return addr

    def restore(self) -> None:
        if self.dirty:
            self.thread.set_regs(self.saved)
            if self.saved_fp is not None:
                self.thread.set_fpstate(self.saved_fp)
            self.dirty = False

    # the calls patch-ctl needs
    def map_named(self, name: str, addr: int, size: int) -> int:
        """Map `size` bytes read+write at exactly `addr` (where the kernel likes when 0), backed by a memfd
        called `name` (so the mapping carries that name in /proc/PID/maps and never merges with its
        neighbours)."""
        fd = self.call(SYS_MEMFD_CREATE, self.scratch_string(name), MFD_CLOEXEC)
        try:
            self.call(SYS_FTRUNCATE, fd, size)
            fixed = MAP_FIXED_NOREPLACE if addr else 0
            return self.call(SYS_MMAP, addr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | fixed, fd, 0)
        finally:
            self.close(fd)

    def mprotect(self, addr: int, size: int, prot: int) -> None:
        self.call(SYS_MPROTECT, addr, size, prot)

    def close(self, fd: int) -> None:
        self.call(SYS_CLOSE, fd)

    def munmap(self, addr: int, size: int) -> None:
        self.call(SYS_MUNMAP, addr, size)
