"""The target's unwinder (libgcc's, from libgcc_s.so.1 in every C++ program) and where a thread may call it.

A patch's `.eh_frame` is handed to `__register_frame_info(begin, object)` with the `struct object` in the
patch's own writable memory (so nothing is allocated in the target), and taken back with
`__deregister_frame_info(begin)` before the patch is unmapped. Both take libgcc's object mutex, and
deregistering may free() the sorted FDE table libgcc built: the thread that makes the call must not have
been stopped inside the unwinder or the allocator, where it may hold those very locks (it would wait on
itself for ever). Other threads run meanwhile, so a lock one of them holds is soon released.
`register_frames`/`deregister_frames` note each registration in the patch's record before the call and
confirm it after (libgcc aborts on deregistering an unknown object: an unconfirmed one keeps its mapping).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from patch_build.common.errors import Refused
from patch_build.loader import faults
from patch_build.loader.objects import LoadedObject
from patch_build.loader.ptrace import NotStopping, ThreadGone, TraceError
from patch_build.loader.remote import RemoteCaller, RemoteError
from patch_build.loader.resolve import ResolveError, Resolver
from patch_build.loader.session import Session, in_clear_thread, in_target
from patch_build.loader.state import PatchRecord

REGISTER, DEREGISTER = "__register_frame_info", "__deregister_frame_info"
ALLOCATOR = ("malloc", "free", "calloc", "realloc", "memalign", "posix_memalign", "aligned_alloc")


@dataclass
class Avoid:
    """Code a thread making a call in the target must not be stopped in (it may hold a lock the call takes)."""

    avoid: list[tuple[int, int]]  # [lo, hi), sorted
    what: str = "the unwinder or the allocator"  # what that code is, for messages

    def clear(self, pcs: list[int]) -> bool:
        """True when none of a thread's frame PCs (innermost first) lies in code to avoid."""
        los = [lo for lo, _ in self.avoid]
        for pc in pcs:
            i = bisect.bisect_right(los, pc) - 1
            if i >= 0 and pc <= self.avoid[i][1]:
                return False
        return True


@dataclass
class FrameRegistry(Avoid):
    register: int = 0  # __register_frame_info(begin, object)
    deregister: int = 0  # __deregister_frame_info(begin) -> object


def entry_ranges(resolver: Resolver, names) -> list[tuple[int, int]]:
    """[lo, hi) of each named global function the process has (a thread inside its internals has the entry
    point on its stack)."""
    ranges = []
    for name in names:
        try:
            found = resolver.global_(name)
        except ResolveError:
            continue  # an indirect function no object imports: no thread is inside it
        if found and found[0]:
            ranges.append((found[0], found[0] + max(found[1], 1)))
    return ranges


def _avoid(objects: list[LoadedObject], resolver: Resolver, unwinder: int) -> list[tuple[int, int]]:
    """The unwinder's library (the whole of its code, its internals have no exported names) and the
    allocator's entry points (a thread inside its internals has one of them on its stack)."""
    ranges = []
    owner = next((o for o in objects if o.start <= unwinder < o.end), None)
    if owner is not None and owner is not objects[0]:  # not the executable (a static libgcc in it)
        ranges += [(m.start, m.end) for m in owner.maps if m.executable]
    return sorted(ranges + entry_ranges(resolver, ALLOCATOR))


def find_registry(objects: list[LoadedObject], resolver: Resolver) -> FrameRegistry | None:
    """The process's unwinder, as the dynamic linker binds it; None in a process without one (C code
    without libgcc_s)."""
    register, deregister = resolver.global_(REGISTER), resolver.global_(DEREGISTER)
    if not register or not deregister or not register[0] or not deregister[0]:
        return None
    return FrameRegistry(_avoid(objects, resolver, register[0]), register=register[0], deregister=deregister[0])


def registry_of(objects: list[LoadedObject], resolver: Resolver, deregister: int) -> FrameRegistry:
    """The registry a patch was registered with, from the deregistration address its record holds."""
    return FrameRegistry(_avoid(objects, resolver, deregister), deregister=deregister)


def register_frames(s: Session, record: PatchRecord, frames: list[tuple[int, int]], resolver: Resolver,
                    timeout: float) -> None:
    """Hand each (.eh_frame, struct object) of the patch's mappings to the target's unwinder, noting each in
    the record before the call and confirming it after."""
    if not frames:
        return
    registry = find_registry(s.objects, resolver)
    if registry is None:
        # No libgcc_s: the process cannot throw C++ exceptions, and what loads libgcc_s later (backtrace,
        # thread cancellation) only stops at the patch's frames. Nothing worth a warning on every C patch.
        return

    def register(caller: RemoteCaller) -> None:
        for eh_frame, obj in frames:
            record.frames.append([eh_frame, obj, registry.deregister, 0])
            s.mem.write(record.start, record.encode())
            caller.call_function(registry.register, eh_frame, obj)
            record.frames[-1][3] = 1
            s.mem.write(record.start, record.encode())
            faults.point("registered", s.pid)

    in_clear_thread(s, registry, register, timeout)


def deregister_frames(s: Session, record: PatchRecord, timeout: float, quiet: bool = False,
                      then=None) -> bool:
    """Take the record's frames back from the target's unwinder (noting it in the header), then run
    then(caller) in the same stopped thread; with `quiet`, False instead of an error when that could not
    be done. A frame whose registration is unknown (patch-ctl killed during the call) cannot be taken
    back safely (libgcc aborts on an unknown one): False, and the mapping must stay."""
    if any(not confirmed for *_, confirmed in record.frames):
        if not quiet:
            raise Refused([(record.module, "its unwind information may still be registered (an earlier patch-ctl "
                                           "was killed while registering it): its memory stays mapped")])
        return False
    if not record.frames:
        if then is not None:
            in_target(s, then)
        return True
    registry = registry_of(s.objects, Resolver(s.objects, {}, s.mem), record.frames[0][2])

    def deregister(caller: RemoteCaller) -> None:
        while record.frames:
            eh_frame, obj, fn, _ = record.frames[-1]
            got = caller.call_function(fn, eh_frame)
            if got != obj:  # libgcc aborts rather than return another; a different unwinder might not
                raise RemoteError(0, f"the unwinder returned {got:#x} for frames {eh_frame:#x}, not {obj:#x}")
            record.frames.pop()
            s.mem.write(record.start, record.encode())
            faults.point("deregistered", s.pid)
        if then is not None:
            then(caller)

    try:
        in_clear_thread(s, registry, deregister, timeout)
    except (ThreadGone, RemoteError, TraceError, NotStopping, Refused):
        if not quiet:
            raise
        return False
    return True
