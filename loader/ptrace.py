"""ptrace(2) through ctypes: seize and stop threads, read and write their registers, step and detach them.

Threads are seized (PTRACE_SEIZE) only while they are stopped: `stop` seizes and interrupts, `release`
detaches. Between two stops nothing is attached, so a signal sent to the target never waits for us.
A signal that arrives while a thread is stopped is remembered and handed back to it on detach. A thread
already held stopped by this process (`held`: a new process at its entry point, loader.entry) is used as
it is and left stopped.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import time

PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_SINGLESTEP, PTRACE_DETACH = 7, 12, 13, 9, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_O_TRACEEXEC = 0x10
PTRACE_EVENT_EXEC = 4
PTRACE_GETREGSET, PTRACE_SETREGSET = 0x4204, 0x4205
NT_PRFPREG, NT_X86_XSTATE = 2, 0x202  # x87/SSE state (FXSAVE), all of it (XSAVE: AVX, AVX-512 too)
_XSTATE_MAX = 1 << 14
PTRACE_EVENT_STOP = 128
WALL = 0x40000000
STOP_LIMIT = 2.0  # seconds a thread may take to stop
DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # handled once no thread is stopped

held: dict[int, Thread] = {}  # tid -> a thread this process holds stopped (loader.entry): Stopped leaves it so

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86-64)."""

    _fields_ = [(n, ctypes.c_uint64) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
        "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]

    def copy(self) -> Regs:
        new = Regs()
        ctypes.pointer(new)[0] = self
        return new


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class ThreadGone(Exception):
    """The thread (or the whole process) exited while we were working on it."""


class TraceError(OSError):
    pass


class NotStopping(Exception):
    """A thread did not stop in time."""

    def __init__(self, tid: int):
        self.tid = tid
        super().__init__(f"thread {tid} did not stop within {STOP_LIMIT:g} s (uninterruptible sleep?)")


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    """ptrace(2); `data` is a number or the address of a ctypes buffer (`ctypes.addressof`). Plain integers
    (argtypes convert them) keep the calls made with every thread stopped cheap."""
    res = _libc.ptrace(request, tid, addr, data)
    if res == -1:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ThreadGone(tid)
        raise TraceError(err, os.strerror(err))
    return res


class Thread:
    def __init__(self, tid: int):
        self.tid = tid
        self.pending_signal = 0  # a signal caught while stopped, re-delivered on detach
        self.regs: Regs | None = None  # as found when stopped
        self.event = 0  # the PTRACE_EVENT_* of the last stop (0: a signal-delivery stop)

    def get_regs(self) -> Regs:
        regs = Regs()
        _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
        return regs

    def set_regs(self, regs: Regs) -> None:
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))

    def get_fpstate(self) -> tuple[int, bytes]:
        """The thread's floating-point and vector registers, (note type, raw): what a called function may
        change that the general registers do not hold."""
        for note in (NT_X86_XSTATE, NT_PRFPREG):
            buf = ctypes.create_string_buffer(_XSTATE_MAX)
            iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), _XSTATE_MAX)
            try:
                _ptrace(PTRACE_GETREGSET, self.tid, note, ctypes.addressof(iov))
            except TraceError as e:
                if e.errno in (errno.EINVAL, errno.ENODEV) and note == NT_X86_XSTATE:
                    continue  # a kernel or CPU without XSAVE
                raise
            return note, buf.raw[:iov.len]
        raise TraceError(errno.ENODEV, "no floating-point register set")

    def set_fpstate(self, state: tuple[int, bytes]) -> None:
        note, raw = state
        buf = ctypes.create_string_buffer(raw, len(raw))
        iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(raw))
        _ptrace(PTRACE_SETREGSET, self.tid, note, ctypes.addressof(iov))

    def wait_stop(self, limit: float = STOP_LIMIT) -> int:
        """Wait for the next stop; returns its signal; a signal-delivery stop other than SIGTRAP is
        remembered for later re-delivery. A thread that does not stop within `limit` seconds (in
        uninterruptible sleep, a vfork parent) raises NotStopping rather than keep the others waiting."""
        deadline = time.monotonic() + limit
        spins = 0
        while True:
            try:
                pid, status = os.waitpid(self.tid, WALL | os.WNOHANG)
            except ChildProcessError:
                raise ThreadGone(self.tid) from None
            except InterruptedError:
                continue
            if pid == 0:
                if time.monotonic() > deadline:
                    raise NotStopping(self.tid)
                spins += 1
                time.sleep(0 if spins < 100 else 0.0002)  # the stop is usually microseconds away
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise ThreadGone(self.tid)
            if os.WIFSTOPPED(status):
                sig = os.WSTOPSIG(status)
                self.event = status >> 16
                if status >> 16 == PTRACE_EVENT_STOP:
                    return 0  # interrupt stop or group stop
                if sig != signal.SIGTRAP:
                    self.pending_signal = sig
                return sig

    def seize(self, options: int = 0) -> None:
        """Attach without stopping the thread; `options`: PTRACE_O_* (PTRACE_O_TRACEEXEC: stop at its exec)."""
        _ptrace(PTRACE_SEIZE, self.tid, 0, options)

    def seize_and_interrupt(self) -> None:
        self.seize()
        _ptrace(PTRACE_INTERRUPT, self.tid, 0, 0)

    def wait_interrupted(self, limit: float = STOP_LIMIT) -> None:
        self.wait_stop(limit)
        self.regs = self.get_regs()

    def single_step(self) -> int:
        _ptrace(PTRACE_SINGLESTEP, self.tid, 0, 0)
        return self.wait_stop()

    def cont(self, deliver: int = 0) -> None:
        """Let the thread run, delivering signal `deliver` (0: the signal of the stop it is in is not)."""
        _ptrace(PTRACE_CONT, self.tid, 0, deliver)

    def interrupt(self) -> None:
        _ptrace(PTRACE_INTERRUPT, self.tid, 0, 0)

    def detach(self) -> None:
        try:
            _ptrace(PTRACE_DETACH, self.tid, 0, self.pending_signal)
        except ThreadGone:
            pass


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ThreadGone(pid) from None


def exited(pid: int, tid: int) -> bool:
    """True for a thread that has exited: gone, or a zombie (a main thread that called pthread_exit stays
    one while the others run)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return next((l.split()[1] in ("Z", "X") for l in f if l.startswith("State:")), True)
    except OSError:
        return True


def live_thread_ids(pid: int) -> list[int]:
    return [t for t in thread_ids(pid) if not exited(pid, t)]


class Stopped:
    """A set of stopped threads of one process; a context manager that always detaches them all.

    Unless `only` names one thread, every live thread is stopped, those created meanwhile too (the task
    list is re-read until it no longer grows). SIGINT, SIGTERM and SIGHUP are blocked while threads are
    attached, so a Ctrl-C is acted upon only after every thread has been released.
    """

    def __init__(self, pid: int, only: int | None = None):
        self.pid = pid
        self.only = only  # stop just this thread
        self.threads: dict[int, Thread] = {}
        self._old_mask = None

    def __enter__(self) -> Stopped:
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
        try:
            self._stop()
        except BaseException:
            self.release()
            raise
        return self

    def _stop(self) -> None:
        """Interrupt every thread first, then collect the stops: the threads stop in parallel."""
        skipped: set[int] = set()
        tids = thread_ids(self.pid) if self.only is None else [self.only]
        while True:
            seized = []
            for tid in tids:
                if tid in self.threads:
                    continue
                if tid in held:
                    held[tid].regs = held[tid].get_regs()
                    self.threads[tid] = held[tid]
                    continue
                thread = Thread(tid)
                try:
                    thread.seize_and_interrupt()
                except ThreadGone:
                    if tid == self.only:
                        raise
                    continue  # a thread that exited meanwhile
                except TraceError:
                    if tid != self.only and exited(self.pid, tid):
                        skipped.add(tid)
                        continue  # a zombie (a main thread gone by pthread_exit) cannot be traced nor run
                    raise
                self.threads[tid] = thread
                seized.append(thread)
            for thread in seized:
                try:
                    thread.wait_interrupted()
                except ThreadGone:
                    del self.threads[thread.tid]
                    if thread.tid == self.only:
                        raise
            if self.only is not None:
                return
            tids = [t for t in thread_ids(self.pid) if t not in self.threads and t not in skipped]
            if not tids:
                return

    def release(self) -> None:
        try:
            for thread in self.threads.values():
                if held.get(thread.tid) is thread:
                    continue
                try:
                    if thread.regs is None:  # seized and interrupted, stop not collected yet
                        thread.wait_interrupted(limit=0.1)
                except (ThreadGone, TraceError, NotStopping):
                    continue  # gone, or not stoppable: the kernel unlinks it when we exit
                thread.detach()
            self.threads.clear()
        finally:
            if self._old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
                self._old_mask = None

    def __exit__(self, *exc) -> None:
        self.release()
