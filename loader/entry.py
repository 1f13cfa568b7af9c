"""A new process held at its program's entry point (AT_ENTRY): the dynamic linker has mapped every library
the program needs and run their constructors, the program has run none of its own code. The daemon applies
patches there, so that the first work a process does is already patched.

The process is stopped either at its exec (`at_exec`: its exec waits at the kernel's permission check,
loader.execgate; it is seized with PTRACE_O_TRACEEXEC, the exec let go on, and it stops before the first
instruction of the new program: always in time), or at its dynamic linker's open of a library a patch
targets (`at_open`: the open waits at the permission check; seized and interrupted, then the open let go
on: it stops as the open returns, in the dynamic linker's start-up, also always in time), or, seen through
the process-event connector, seized and interrupted as soon as possible. Unless it has already run past its
entry point (the connector's event came late: then it is let go at once, `held` False), a trap is written at
the entry point and the process let run to it: a jump to a stub in a page mapped near it
(x86_64.entry_trap), which sends the thread a signal ignored by default (SIGURG, or SIGWINCH when that one is
blocked or handled), then runs the instructions the jump covered, moved, and jumps back. The thread stops
with that signal just past the stub's syscall; the entry point's bytes are put back, the signal dropped, the
registers the stub saved restored, the thread set back to the entry point and held stopped there
(loader.ptrace.held: the apply's stops use it as it is) until the block ends, the stub's page unmapped.
Whatever goes wrong, the bytes are put back and the process detached, to run on as if never stopped; signals
it receives meanwhile are delivered. A tracer that dies releases its tracees (the kernel detaches them), a
fanotify group that closes allows its pending execs and opens, and a process whose daemon is killed
(SIGKILL) with the trap in place runs through the stub unharmed: its signal is ignored. Only where no stub
can be made (a short branch among the first instructions; both signals blocked or handled; no free page
within reach) is the trap an int3, which such a SIGKILL turns into the process's death by SIGTRAP.
"""
from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
from collections.abc import Callable

from patch_build.common.errors import InputError
from patch_build.elfcore.x86_64_lengths import MAX_LENGTH
from patch_build.loader import faults, layout, ptrace, x86_64
from patch_build.loader.placement import free_addresses_near
from patch_build.loader.procfs import Mapping, Memory, read_maps
from patch_build.loader.ptrace import (DEFERRED_SIGNALS, PTRACE_EVENT_EXEC, PTRACE_O_TRACEEXEC, NotStopping, Thread,
                                       ThreadGone, TraceError)
from patch_build.loader.remote import (MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_EXEC, PROT_READ, SYS_MMAP,
                                       RemoteCaller, RemoteError, find_syscall_insn)

AT_BASE, AT_ENTRY = 7, 9  # <elf.h>: the dynamic linker's load address, the program's entry point
INT3 = b"\xcc"
RUN_LIMIT = 1.0  # seconds the dynamic linker may take to reach the entry point; then the process is let go
EXEC_LIMIT = 1.0  # seconds an exec may take from its permission to its stop (else it failed: the old program runs)
BLOCK_LIMIT = 0.1  # seconds an opener waiting at the gate may take to go to sleep: microseconds, unless preempted
STACK_LIMIT = 1 << 20  # bytes of the process's stack looked at: more than the dynamic linker uses
_AUXV_LIMIT = 4096
# Signals whose default action is to ignore them: what the entry stub sends (the first the thread neither blocks
# nor handles), so that without a tracer it is as if it had sent nothing.
_QUIET_SIGNALS = (signal.SIGURG, signal.SIGWINCH)
_STUB_TRIES = 4  # free places near the entry point tried for the stub's page


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


def _quiet_signal(pid: int) -> int | None:
    """The first of _QUIET_SIGNALS the process's main thread neither blocks nor handles (/proc/PID/status)."""
    masks = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f.read(1 << 16).splitlines():
            key, _, value = line.partition(":")
            if key in ("SigBlk", "SigCgt"):
                masks[key] = int(value.strip(), 16)
    if len(masks) != 2:
        return None
    return next((int(sig) for sig in _QUIET_SIGNALS if not (masks["SigBlk"] | masks["SigCgt"]) >> (sig - 1) & 1),
                None)


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
        self.original = b""  # the entry point's bytes while the trap is written over them
        self.trap_signal = signal.SIGTRAP  # what the trap stops the thread with ...
        self.stop_at = 0  # ... and where
        self.stub = 0  # the stub's page (0: the trap is an int3)
        self.syscall_insn = 0  # a syscall instruction of the process's, to map and unmap the stub with

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
        self.entry = entry
        self._arm()
        deadline = time.monotonic() + RUN_LIMIT
        deliver = 0
        while True:
            self.thread.cont(deliver)
            self.stopped = False
            faults.point("entry-armed", self.pid)
            sig = self.thread.wait_stop(max(deadline - time.monotonic(), 0.0))
            self.stopped = True
            if sig == self.trap_signal and self._trapped():
                self._disarm()
                self.thread.regs = self.thread.get_regs()
                self._unmap_stub()
                return True
            if sig in (0, signal.SIGTRAP):  # stopped by a signal (SIGSTOP), or a trap of its own: let it be
                if sig == signal.SIGTRAP:
                    self.thread.pending_signal = signal.SIGTRAP
                return False
            deliver, self.thread.pending_signal = self.thread.pending_signal, 0  # its own signal, delivered

    def _arm(self) -> None:
        """Write the trap at the entry point: a jump to a stub that signals the thread (x86_64.entry_trap),
        which a process whose tracer dies runs through unharmed; an int3 when no stub can be made."""
        maps = read_maps(self.pid)
        mapped_to = next((m.end for m in maps if self.entry in m), self.entry + len(INT3))
        code = self.mem.read(self.entry, min(MAX_LENGTH * 2, mapped_to - self.entry))  # the jump's instructions
        trap = self._stub_trap(code, maps)
        if trap is None:
            self.original = code[:len(INT3)]
            self.mem.write(self.entry, INT3)
            self.trap_signal, self.stop_at = signal.SIGTRAP, self.entry + len(INT3)
            return
        self.original = code[:len(trap.jump)]
        self.mem.write(self.stub, trap.stub)
        self.mem.write(self.entry, trap.jump)
        self.stop_at = trap.stop_at

    def _stub_trap(self, code: bytes, maps: list[Mapping]) -> x86_64.EntryTrap | None:
        """A stub mapped near the entry point and its trap; None when the thread blocks or handles both
        signals a stub may send, no page is free within reach, or the first instructions cannot be moved."""
        self.trap_signal = _quiet_signal(self.pid)
        if self.trap_signal is None:
            return None
        try:
            self.syscall_insn = find_syscall_insn(self.mem, maps)
        except RemoteError:  # none mapped (no vDSO): nothing to map the stub with
            return None
        caller = RemoteCaller(self.thread, self.mem, self.syscall_insn)
        try:
            for at in free_addresses_near(maps, layout.PAGE, [self.entry])[:_STUB_TRIES]:
                try:
                    self.stub = caller.call(SYS_MMAP, at, layout.PAGE, PROT_READ | PROT_EXEC,
                                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
                    break
                except RemoteError:
                    continue
        finally:
            caller.restore()
        trap = x86_64.entry_trap(self.entry, code, self.stub, self.pid, self.trap_signal) if self.stub else None
        if trap is None:
            self._unmap_stub()
        return trap

    def _unmap_stub(self) -> None:
        """The stub's page removed once the thread is held at the entry point, never to run it again."""
        if self.stub:
            caller = RemoteCaller(self.thread, self.mem, self.syscall_insn)
            try:
                caller.munmap(self.stub, layout.PAGE)
            except RemoteError:
                pass  # a page left mapped, unused
            finally:
                caller.restore()
            self.stub = 0

    def _trapped(self) -> bool:
        """Stopped by the trap: then set back to run the entry point's own instructions, with the registers
        it had there (the stub's pushes popped), its signal not delivered."""
        regs = self.thread.get_regs()
        if not self.stop_at or regs.rip != self.stop_at:
            return False
        if self.stub:
            saved = struct.unpack(f"<{len(x86_64.ENTRY_SAVED)}Q", self.mem.read(regs.rsp, 8 * len(x86_64.ENTRY_SAVED)))
            for name, value in zip(reversed(x86_64.ENTRY_SAVED), saved):
                setattr(regs, name, value)
            regs.rsp += 8 * len(saved)
            self.thread.pending_signal = 0
        regs.rip = self.entry
        self.thread.set_regs(regs)
        return True

    def _disarm(self) -> None:
        if self.original:
            self.mem.write(self.entry, self.original)
            self.original = b""

    def release(self) -> None:
        """The trap removed (first: that needs no stop) and the process detached, whatever happened. A thread
        in the stub runs on through it (the stub's page stays)."""
        try:
            if self.original:
                try:
                    self._disarm()
                except (OSError, ThreadGone):
                    self.original = b""  # gone: nothing left to put back
            if self.seized and not self.stopped:
                self.thread.interrupt()
                self.thread.wait_stop()
                self.stopped = True
            if self.seized and self.entry:
                self._trapped()  # by the trap, just before it was removed
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
