"""A new process held at its program's entry point (AT_ENTRY): the dynamic linker has mapped every library
the program needs and run their constructors, the program has run none of its own code. The daemon applies
patches there, so that the first work a process does is already patched.

The process is stopped either at its exec (`at_exec`: its exec waits at the kernel's permission check,
loader.execgate; it is seized with PTRACE_O_TRACEEXEC, the exec let go on, and it stops before the first
instruction of the new program: always in time), or at its dynamic linker's open of a library a patch
targets (`at_open`: the open waits at the permission check; seized and interrupted, then the open let go
on: it stops as the open returns, in the dynamic linker's start-up, also always in time), or, seen through
the process-event connector, seized and interrupted as soon as possible. Unless it has already run past its
entry point (the connector's event came late: then it is let go at once, `held` False), a breakpoint (int3)
is written at the entry point and the process let run to it; the byte is put back, the thread set back to
the entry point and held stopped there (loader.ptrace.held: the apply's stops use it as it is) until the
block ends. Whatever goes wrong, the byte
is put back and the process detached, to run on as if never stopped; signals it receives meanwhile are
delivered. A tracer that dies releases its tracees (the kernel detaches them), and a fanotify group that
closes allows its pending execs and opens; what remains: a daemon killed by SIGKILL while the breakpoint is
in place (the time the dynamic linker takes, about a millisecond) leaves the process to die of SIGTRAP at its
entry point.
"""
from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
from collections.abc import Callable

from patch_build.common.errors import InputError
from patch_build.loader import faults, ptrace
from patch_build.loader.procfs import Mapping, Memory, read_maps
from patch_build.loader.ptrace import (DEFERRED_SIGNALS, PTRACE_EVENT_EXEC, PTRACE_O_TRACEEXEC, NotStopping, Thread,
                                       ThreadGone, TraceError)

AT_BASE, AT_ENTRY = 7, 9  # <elf.h>: the dynamic linker's load address, the program's entry point
INT3 = b"\xcc"
RUN_LIMIT = 1.0  # seconds the dynamic linker may take to reach the entry point; then the process is let go
EXEC_LIMIT = 1.0  # seconds an exec may take from its permission to its stop (else it failed: the old program runs)
BLOCK_LIMIT = 0.1  # seconds an opener waiting at the gate may take to go to sleep: microseconds, unless preempted
STACK_LIMIT = 1 << 20  # bytes of the process's stack looked at: more than the dynamic linker uses
_AUXV_LIMIT = 4096


def auxv(pid: int) -> dict[int, int]:
    """The process's auxiliary vector (/proc/PID/auxv): type -> value."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        data = f.read(_AUXV_LIMIT)
    out = {}
    for key, value in struct.iter_unpack("<QQ", data[:len(data) // 16 * 16]):
        if key == 0:
            break
        out[key] = value
    return out


def start_stack(pid: int) -> int:
    """Where the stack began at exec (/proc/PID/stat's startstack: the address of argc)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read(4096)
    return int(stat[stat.rindex(")") + 2:].split()[25])


class _Hold:
    def __init__(self, pid: int):
        self.pid = pid
        self.thread = Thread(pid)
        self.seized = self.stopped = False
        self.mem: Memory | None = None
        self.entry = 0
        self.byte = b""  # the entry point's first byte while the breakpoint is in place

    def stop(self) -> None:
        """Seized and interrupted where it is."""
        self.thread.seize_and_interrupt()
        self.seized = True
        self.thread.wait_interrupted()
        self.stopped = True

    def stop_at_open(self, allow: Callable[[], None]) -> None:
        """Seized and interrupted while its open waits for `allow()` (called whatever happens): the interrupt
        waits for the open (a killable sleep) and stops it as the open returns, still in the dynamic linker.
        (Interrupted after the allow, it could run past its entry point meanwhile.)"""
        try:
            self.thread.seize()
            self.seized = True
            self.thread.interrupt()
            faults.point("open-seized", self.pid)
        finally:
            allow()
        self.thread.wait_interrupted()
        self.stopped = True
        faults.point("open-stopped", self.pid)

    def stop_at_exec(self, allow: Callable[[], None]) -> bool:
        """Seized while its exec waits for `allow()` (called whatever happens), then True once stopped at
        the exec (PTRACE_EVENT_EXEC: the new program mapped, none of its instructions run); its own signals
        meanwhile delivered. False when stopped by SIGSTOP instead; NotStopping when the exec does not get
        there in EXEC_LIMIT (it failed: the old program runs on)."""
        try:
            self.thread.seize(PTRACE_O_TRACEEXEC)
            self.seized = True
            faults.point("exec-seized", self.pid)
        finally:
            allow()
        deadline = time.monotonic() + EXEC_LIMIT
        while True:
            sig = self.thread.wait_stop(max(deadline - time.monotonic(), 0.0))
            self.stopped = True
            if self.thread.event == PTRACE_EVENT_EXEC:
                self.thread.regs = self.thread.get_regs()
                faults.point("exec-stopped", self.pid)
                return True
            if sig == 0:  # stopped by SIGSTOP: left so when detached
                return False
            self.thread.pending_signal = 0
            self.thread.cont(sig)  # a signal of its own, delivered
            self.stopped = False

    def run_to_entry(self, wanted: Callable[[], bool]) -> bool:
        """From a stop: True with the process stopped at its entry point; False when it is not `wanted()`
        (asked first), past its entry point, or cannot get there."""
        if not wanted():
            return False
        aux = auxv(self.pid)
        entry = aux.get(AT_ENTRY, 0)
        self.mem = Memory(self.pid)
        if self.thread.regs.rip == entry:
            return True
        if not before_entry(self.pid, self.thread.regs.rip, self.thread.regs.rsp, self.mem, aux):
            return False
        self.byte = self.mem.read(entry, 1)
        self.mem.write(entry, INT3)
        self.entry = entry
        deadline = time.monotonic() + RUN_LIMIT
        deliver = 0
        while True:
            self.thread.cont(deliver)
            self.stopped = False
            sig = self.thread.wait_stop(max(deadline - time.monotonic(), 0.0))
            self.stopped = True
            if sig == signal.SIGTRAP and self._trapped():
                self._remove_breakpoint()
                self.thread.regs = self.thread.get_regs()
                return True
            if sig in (0, signal.SIGTRAP):  # stopped by a signal (SIGSTOP), or a trap of its own: let it be
                if sig == signal.SIGTRAP:
                    self.thread.pending_signal = signal.SIGTRAP
                return False
            deliver, self.thread.pending_signal = self.thread.pending_signal, 0  # its own signal, delivered

    def _trapped(self) -> bool:
        """Stopped by the breakpoint: then set back to run the entry point's own instruction."""
        regs = self.thread.get_regs()
        if regs.rip != self.entry + 1:
            return False
        regs.rip = self.entry
        self.thread.set_regs(regs)
        return True

    def _remove_breakpoint(self) -> None:
        if self.byte:
            self.mem.write(self.entry, self.byte)
            self.byte = b""

    def release(self) -> None:
        """The breakpoint removed (first: that needs no stop) and the process detached, whatever happened."""
        try:
            if self.byte:
                try:
                    self._remove_breakpoint()
                except (OSError, ThreadGone):
                    self.byte = b""  # gone: nothing left to put back
            if self.seized and not self.stopped:
                self.thread.interrupt()
                self.thread.wait_stop()
                self.stopped = True
            if self.seized and self.entry:
                self._trapped()  # by the breakpoint, just before it was removed
        except (ThreadGone, TraceError, NotStopping, OSError):
            pass
        finally:
            if self.seized:
                self.thread.detach()
            if self.mem is not None:
                self.mem.close()


def before_entry(pid: int, rip: int, rsp: int, mem: Memory, aux: dict[int, int]) -> bool:
    """The process (its thread at `rip`, stack at `rsp`) runs the dynamic linker's start-up: it stands in the
    dynamic linker, and its stack holds no address of the program's code but the entry point (which the
    dynamic linker keeps): once the program has started, its _start's return address is there (so a dlopen
    after the start is told apart). A wrong guess either way is safe: past the entry point the breakpoint is
    never reached (the process is let go after RUN_LIMIT), and before it, the process is patched as it runs."""
    entry, interp_base = aux.get(AT_ENTRY, 0), aux.get(AT_BASE, 0)
    maps = read_maps(pid)
    interp = next((m.path for m in maps if interp_base in m and m.path), None)
    if not interp_base or not any(m.path == interp and rip in m for m in maps):
        return False
    top = start_stack(pid)
    low = (rsp + 7) & ~7
    if not low <= top <= low + STACK_LIMIT:
        return False
    program = _program_code(pid, maps)
    words = struct.unpack(f"<{(top - low) // 8}Q", mem.read(low, (top - low) // 8 * 8))
    return not any(w != entry and any(w in m for m in program) for w in words)


def opening_in_start_up(pid: int) -> bool:
    """The process's main thread, blocked in a system call (an open waiting at the fanotify gate), is in its
    dynamic linker's start-up (`before_entry`; its stack pointer and program counter from /proc/PID/syscall,
    which needs no stop). The opener queues its event before it sleeps: read at once, the file may still say
    "running" for a moment (on a loaded machine, one start in ten went unheld), so it is read again until the
    thread sleeps, for at most BLOCK_LIMIT."""
    deadline = time.monotonic() + BLOCK_LIMIT
    while True:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read(512).split()
        if fields != ["running"] or time.monotonic() >= deadline:
            break
        time.sleep(0.0002)
    if len(fields) != 9:  # still running, or not in a system call
        return False
    with Memory(pid) as mem:
        return before_entry(pid, int(fields[8], 16), int(fields[7], 16), mem, auxv(pid))


def _program_code(pid: int, maps: list[Mapping]) -> list[Mapping]:
    exe = os.readlink(f"/proc/{pid}/exe")
    return [m for m in maps if m.executable and m.path == exe]


@contextlib.contextmanager
def at_entry(pid: int, wanted: Callable[[], bool], at_exec: Callable[[], None] | None = None,
             at_open: Callable[[], None] | None = None):
    """with at_entry(pid, wanted) as held: `held` True while the process is stopped at its entry point, False
    when it is not `wanted()` (asked while it is stopped, before anything else is done) or could not be
    (past it, traced by another, gone): it then runs. `at_exec`: the process waits at its exec's permission
    check, and `at_exec()` lets it go on (called once it is seized, or on failure); `at_open`: the same for
    an open of a library by its dynamic linker's start-up (loader.execgate). Let go on the way out,
    whatever happened; SIGINT/SIGTERM/SIGHUP are held meanwhile, so that a stop asked for never leaves it
    stopped."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
    hold = _Hold(pid)
    try:
        try:
            if at_exec is not None:
                held = hold.stop_at_exec(at_exec) and hold.run_to_entry(wanted)
            elif at_open is not None:
                hold.stop_at_open(at_open)
                held = hold.run_to_entry(wanted)
            else:
                hold.stop()
                held = hold.run_to_entry(wanted)
        except (ThreadGone, TraceError, NotStopping, OSError, ValueError, InputError):
            held = False
        if held:
            ptrace.held[pid] = hold.thread
        yield held
    finally:
        ptrace.held.pop(pid, None)
        hold.release()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
