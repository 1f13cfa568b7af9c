"""The daemon's exec gate: every exec on the machine waits at the kernel's permission check (loader.fanotify)
until a thread of the daemon has looked at the file: one that no installed patch targets (by build-id, read
once per device, inode and modification time) goes on at once; one that a patch targets is handed to the
daemon's main thread (`take`), which seizes the exec'ing process with ptrace before it lets the exec go on
(`Handoff.allow`), so the process stops at its exec before any instruction of the new program.

Shared libraries are not exec'd: the dynamic linker opens them with a plain open. The files of the libraries
that patches target (`mark_library`: the daemon finds them) are marked so that each open of one waits the
same way; an open by a process's main thread in its dynamic linker's start-up (before its entry point:
loader.entry.opening_in_start_up) is handed over like an exec, and the main thread seizes the process before
it lets the open go on, then holds it at its entry point. Any other open (a dlopen after the start, a copy,
the daemon's own reads) goes on at once.

A thread of its own answers the events, so that no exec waits while the main thread applies a patch; the
main thread, which is the ptrace tracer, only gets the targeted ones. Every wait is bounded: a handoff the
main thread has not taken within HANDOFF_LIMIT is allowed by the gate (the process then starts unheld and is
patched through the process-event connector, as it runs). Any error: the exec is allowed, and logged.
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable

from patch_build.common.errors import InputError
from patch_build.common.interrupts import HANDLED
from patch_build.elfcore import notes
from patch_build.elfcore.constants import ELFMAG
from patch_build.loader import faults
from patch_build.loader.entry import opening_in_start_up
from patch_build.loader.fanotify import Permission, Permissions

HANDOFF_LIMIT = 1.0  # seconds a targeted exec (or library open) waits for the main thread (busy applying) before it goes on


class Handoff:
    """A targeted exec (or library open: not `exec`) waiting for the main thread: its permission answered
    exactly once, by the main thread (`allow`, once it has seized the process) or by the gate (late)."""

    def __init__(self, gate: ExecGate, event: Permission, path: str):
        self.gate, self.event, self.path = gate, event, path
        self.pid = event.tid
        self.exec = event.exec
        self.since = time.monotonic()
        self.deadline = self.since + HANDOFF_LIMIT
        self._lock = threading.Lock()
        self.taken = False  # by the main thread
        self.answered = False

    def take(self) -> bool:
        """Claimed by the main thread; False when the gate has already let it go."""
        with self._lock:
            if self.answered:
                return False
            self.taken = True
            return True

    def allow(self, unless_taken: bool = False) -> bool:
        """Let the exec go on, once (a second call does nothing); `unless_taken`: not when the main thread has
        taken it (the gate, at the deadline). True when this call answered."""
        with self._lock:
            if self.answered or (unless_taken and self.taken):
                return False
            self.answered = True
        self.gate.answer(self.event)
        return True

    def done(self) -> None:
        """The main thread is finished with the process: its later execs are looked at again."""
        self.allow()
        self.gate.finished(self.pid)


class ExecGate:
    """`targets()`: the build-ids that installed patches target (called from the gate's thread); `log`: one
    line per problem."""

    def __init__(self, targets: Callable[[], set[str]], log: Callable[[str], None]):
        self.targets, self.log = targets, log
        self.permissions = Permissions()  # loader.fanotify.Unavailable: the caller falls back
        self.build_ids: dict[tuple[int, int, int], str] = {}  # (device, inode, mtime ns) -> build-id
        self._lock = threading.Lock()
        self._handoffs: list[Handoff] = []  # for the main thread, in order
        self._pending: list[Handoff] = []  # not answered yet: the gate's to watch
        self._holding: set[int] = set()  # pids handed off and not done: their further execs (the dynamic linker's
        # own FAN_OPEN_EXEC_PERM) go on at once
        self._late: set[int] = set()  # late_loads()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # main thread: handoffs ready
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._mounts = open("/proc/self/mountinfo", "rb")  # exceptional when the mount table changes
        # The thread never takes SIGINT/SIGTERM/SIGHUP: the main thread defers them while it holds a process.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            self._thread = threading.Thread(target=self._run, name="exec-gate", daemon=True)
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    @property
    def filesystems(self) -> int:
        return len(self.permissions.marked)

    def fileno(self) -> int:
        """Readable when handoffs (or late loads) wait for the main thread."""
        return self._wake_r

    def take(self) -> list[Handoff]:
        """The handoffs the main thread now owns (those the gate has not let go meanwhile)."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            handoffs, self._handoffs = self._handoffs, []
        if handoffs:
            faults.point("exec-take" if handoffs[0].exec else "open-take", handoffs[0].pid)
        return [h for h in handoffs if h.take()]

    def late_loads(self) -> set[int]:
        """The processes that have opened a targeted library since the last call and were not held (past
        their start: a dlopen; or a copy, a read): the main thread patches them as they run."""
        with self._lock:
            pids, self._late = self._late, set()
        return pids

    def _loaded_late(self, pid: int) -> None:
        with self._lock:
            self._late.add(pid)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the main thread has wake-ups enough

    def mark_library(self, path: str) -> None:
        """Opens of the file at `path` (a library that a patch targets) wait at the gate from now on; OSError
        when it cannot be marked."""
        self.permissions.mark_file(path)

    def answer(self, event: Permission) -> None:
        try:
            self.permissions.allow(event)
        except OSError as e:  # the group closed meanwhile (the kernel then allowed it), or an event gone
            self.log(f"exec gate: an answer failed: {e}")

    def finished(self, pid: int) -> None:
        with self._lock:
            self._holding.discard(pid)

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as e:  # noqa: BLE001 -- a gate that cannot answer must not stay shut
            with self._lock:
                self._handoffs.clear()
            self.permissions.close()  # the kernel lets every waiting exec go on
            self.log(f"exec gate closed after an error ({e}): new processes are seen through the process-event "
                     "connector only")

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._pending = [h for h in self._pending if not h.answered]
                late = [h for h in self._pending if not h.taken and h.deadline <= time.monotonic()]
                wait = min((h.deadline for h in self._pending if not h.taken), default=None)
            for handoff in late:
                if not handoff.allow(unless_taken=True):
                    continue
                self.finished(handoff.pid)
                name = os.path.basename(handoff.path)
                where = f"({name}) not held at its exec" if handoff.exec else f"not held at its open of {name}"
                self.log(f"process {handoff.pid} {where}: the daemon was busy for {HANDOFF_LIMIT:g} s")
            timeout = 1.0 if wait is None else max(wait - time.monotonic(), 0.0)
            ready, _, changed = select.select([self.permissions, self._stop_r], [], [self._mounts], timeout)
            if self._stop_r in ready:
                return
            if changed:
                self._remount()
            if self.permissions in ready:
                for event in self.permissions.read():
                    self._decide(event)

    def _remount(self) -> None:
        """The mount table changed (each poll of /proc/self/mountinfo reports a change once): new filesystems
        marked."""
        try:
            self.permissions.mark_filesystems()
        except (OSError, ValueError) as e:
            self.log(f"exec gate: new mounts not marked: {e}")

    def _decide(self, event: Permission) -> None:
        """Allow the exec or open at once, or hand it to the main thread; whatever fails, it is allowed."""
        try:
            handoff = self._handoff(event)
        except Exception as e:  # noqa: BLE001 -- no error may leave an exec or open waiting
            self.log(f"exec gate: process {event.tid} let go: {e}")
            handoff = None
        if handoff is None:
            self.answer(event)
            return
        with self._lock:
            self._holding.add(handoff.pid)
            self._handoffs.append(handoff)
            self._pending.append(handoff)
        self._wake()

    def _handoff(self, event: Permission) -> Handoff | None:
        """A handoff when the file is targeted and the thread that execs or opens it may be held: none of
        the daemon's own threads (it would wait for itself), not a process already being held (the dynamic
        linker its exec opens, its libraries), the process's main thread (an exec from another thread changes
        its thread id at the exec: not held, it is patched as it runs), and for an open, one in its dynamic
        linker's start-up (a dlopen later, a copy or a read of the file is not held)."""
        targets = self.targets()
        if not targets:
            return None
        with self._lock:
            if event.tid in self._holding:
                return None
        st = os.fstat(event.fd)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key not in self.build_ids:
            self.build_ids[key] = _build_id(event.fd)
        if self.build_ids[key] not in targets:
            return None
        if event.tid <= 0 or os.path.exists(f"/proc/self/task/{event.tid}"):
            return None
        pid = _tgid(event.tid)
        if event.exec and pid != event.tid:
            return None
        if not event.exec and (pid != event.tid or not opening_in_start_up(event.tid)):
            self._loaded_late(pid)
            return None
        faults.point("exec-handoff" if event.exec else "open-handoff", event.tid)
        return Handoff(self, event, os.readlink(f"/proc/self/fd/{event.fd}"))

    def close(self) -> None:
        """Stop the gate's thread; closing the group lets every exec still waiting go on (the kernel)."""
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            left = [h for h in self._pending if not h.answered]
        for handoff in left:
            handoff.allow()
        self.permissions.close()
        self._mounts.close()
        for fd in (self._wake_r, self._wake_w, self._stop_r, self._stop_w):
            os.close(fd)


def _build_id(fd: int) -> str:
    """The build-id of the ELF file open as `fd`, "" for another file (a script) or an ELF file without one."""
    if os.pread(fd, 4, 0) != ELFMAG:
        return ""
    try:
        return notes.build_id_of(fd) or ""  # through the descriptor: opening the file again would wait for us
    except InputError:
        return ""


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status") as f:
        return next((int(l.split()[1]) for l in f if l.startswith("Tgid:")), 0)
