"""A target process as patch-ctl works on it: its memory, maps, loaded objects and recorded patches (`Session`,
holding the target's lock), what the work cost it (`Stats`), process-level failures turned into one-line
errors (`run`), and calls run by one stopped thread of it (`in_target`, `in_clear_thread`)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from patch_build.common.errors import InputError, PatchBuildError, Refused
from patch_build.loader import layout, x86_64 as arch
from patch_build.loader.lock import TargetLock
from patch_build.loader.objects import LoadedObject, loaded_objects
from patch_build.loader.procfs import Mapping, Memory, check_process, dying, process_alive, read_maps, tracer_of
from patch_build.loader.ptrace import NotStopping, Stopped, ThreadGone, TraceError, live_thread_ids
from patch_build.loader.remote import RemoteCaller, RemoteError, find_syscall_insn
from patch_build.loader.resolve import ResolveError
from patch_build.loader.state import PatchRecord, find_patches
from patch_build.loader.unwind import ObjectCfi, Unwinder

if TYPE_CHECKING:  # loader.frames makes its calls through a Session
    from patch_build.loader.frames import Avoid

RETRY_PAUSE = 0.02  # between two attempts: let the threads run


class ProcessGone(InputError):
    pass


@dataclass
class Stats:
    """What an apply or revert cost the target. `pause` is the longest time every thread was stopped at
    once (one consistency attempt); `stops` counts every stop the target saw, of one thread (for remote
    calls) or of all, and `longest_stop` is the longest of them."""

    attempts: int = 0
    pause: float = 0.0
    stops: int = 0
    longest_stop: float = 0.0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)  # what was done short of what was asked
    late_signal: int = 0  # a signal that arrived once the work could no longer be stopped

    def stopped(self, seconds: float, every_thread: bool) -> None:
        self.stops += 1
        self.longest_stop = max(self.longest_stop, seconds)
        if every_thread:
            self.pause = max(self.pause, seconds)


class Session:
    """One process: its memory, maps, loaded objects, recorded patches; errors turned into ours. Holds the
    target's lock (loader.lock) while it is open, unless `wait` is None and another patch-ctl has it."""

    def __init__(self, pid: int, wait: float | None = 10.0):
        check_process(pid)
        self.pid = pid
        self.lock = TargetLock(pid, wait)
        self.mem = Memory(pid)
        self.stats = Stats()
        self.refresh()
        self.cfi_cache: dict[str, ObjectCfi] = {}
        self._syscall = None

    def refresh(self) -> None:
        self.maps: list[Mapping] = read_maps(self.pid)
        self.objects: list[LoadedObject] = loaded_objects(self.pid, self.maps)
        self.patches: list[PatchRecord] = find_patches(self.maps, self.mem)

    @property
    def caller_tid(self) -> int:
        """The thread that runs system calls for us: the main thread, unless it has exited."""
        tids = live_thread_ids(self.pid)
        if not tids:
            raise ThreadGone(self.pid)
        return self.pid if self.pid in tids else tids[0]

    @property
    def syscall_insn(self) -> int:
        if self._syscall is None:
            self._syscall = find_syscall_insn(self.mem, self.maps)
        return self._syscall

    def unwinder(self) -> Unwinder:
        return Unwinder(self.objects, self.maps, self.mem, self.cfi_cache, self.pid)

    @contextlib.contextmanager
    def stopped(self, only: int | None = None):
        """Stopped(...) timed into the stats."""
        t = time.perf_counter()
        try:
            with Stopped(self.pid, only=only) as stopped:
                yield stopped
        finally:
            self.stats.stopped(time.perf_counter() - t, every_thread=only is None)

    def close(self) -> None:
        for obj in self.objects:
            obj.close()
        self.mem.close()
        self.lock.close()


def gone(pid: int, what: str) -> ProcessGone:
    return ProcessGone(f"process {pid} exited during {what}")


def still_alive(pid: int) -> bool:
    """False once the process is exiting: a killed process's threads go one by one, and until the last has
    gone some still show in /proc, each with the SIGKILL it is dying of pending."""
    return process_alive(pid) and not dying(pid)


def run(pid: int, what: str, fn, wait: float | None = 10.0):
    """Run fn(session) translating process-level failures into one-line errors."""
    session = None
    try:
        session = Session(pid, wait)
        return fn(session)
    except ThreadGone:
        if still_alive(pid):
            raise InputError(f"a thread of process {pid} vanished during {what}; try again") from None
        raise gone(pid, what) from None
    except TraceError as e:
        if not still_alive(pid):
            raise gone(pid, what) from None
        tracer = tracer_of(pid)
        if tracer:
            raise InputError(f"cannot trace process {pid}: already traced by process {tracer}") from None
        raise InputError(f"cannot trace process {pid}: {e.strerror}") from None
    except (ResolveError, layout.LayoutError, arch.RelocationError, NotStopping) as e:
        raise PatchBuildError(str(e)) from None  # exit 1: the module does not fit this process
    except RemoteError as e:
        raise PatchBuildError(f"a call run in process {pid} failed: {e.strerror}") from None
    except OSError as e:
        if not still_alive(pid):
            raise gone(pid, what) from None
        raise PatchBuildError(str(e)) from None
    finally:
        if session is not None:
            session.close()


def in_clear_thread(s: Session, registry: Avoid, calls, timeout: float):
    """calls(caller) run by a thread stopped outside `registry`'s code (the unwinder and the allocator, or
    the dynamic linker: whose locks it might hold), the only one stopped meanwhile; threads found inside
    are let go and others tried."""
    deadline = time.monotonic() + timeout
    while True:
        first = s.caller_tid
        for tid in [first] + [t for t in live_thread_ids(s.pid) if t != first]:
            try:
                with s.stopped(only=tid) as one:
                    thread = one.threads[tid]
                    pcs, _ = s.unwinder().code_addresses(thread.regs.rip, thread.regs.rsp, thread.regs.rbp)
                    if not registry.clear(pcs):
                        continue
                    caller = RemoteCaller(thread, s.mem, s.syscall_insn)
                    try:
                        return calls(caller)
                    finally:
                        caller.restore()
            except ThreadGone:
                if tid == first or not process_alive(s.pid):
                    raise
            except NotStopping:
                continue  # in uninterruptible sleep: another may do
        if time.monotonic() >= deadline:
            raise Refused([(f"process {s.pid}", f"every thread stayed inside {registry.what}; "
                                                f"gave up after {timeout:g} s")])
        time.sleep(RETRY_PAUSE)


def in_target(s: Session, calls):
    """calls(caller): system calls run by the target's main thread, the only one stopped meanwhile."""
    tid = s.caller_tid
    with s.stopped(only=tid) as one:
        caller = RemoteCaller(one.threads[tid], s.mem, s.syscall_insn)
        try:
            return calls(caller)
        finally:
            caller.restore()


