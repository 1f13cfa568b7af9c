"""apply, revert and list patches in a running process: the library behind `patch-ctl`.

apply: read the module, match its targets (build-ids), resolve what it references, then with one thread
stopped map memory near the target, relocate and write the patch there, and register its unwind
information (`.eh_frame`) with the target's unwinder; then stop every thread, check consistency and write
the redirecting jumps, retrying until the timeout. Only that last step stops the whole process. Whatever
fails, the frames are deregistered, the mapping is removed and the code left as it was.
revert: with every thread stopped and none inside the patch, put back the bytes each jump replaced (the
original code, or the jump of the patch it was stacked on); then, the other threads running again,
deregister the patch's frames and unmap it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from diffobj.errors import InputError, PatchBuildError, Refused
from diffobj.read import check_header, read_object
from diffobj.inputfile import read_input
from linker.module import MAX_MODULE_SIZE, Func, ModuleInfo, read_module
from loader import layout, x86_64 as arch
from loader.consistency import Range, check
from loader.frames import FrameRegistry, find_registry, registry_of
from loader.objects import LoadedObject, loaded_objects
from loader.procfs import Mapping, Memory, check_process, process_alive, read_maps, tracer_of
from loader.ptrace import NotStopping, Stopped, ThreadGone, TraceError, live_thread_ids, thread_ids
from loader.remote import PROT_READ, PROT_WRITE, RemoteCaller, RemoteError, find_syscall_insn
from loader.resolve import ResolveError, Resolver, match_targets
from loader.state import ACTIVE, PENDING, REVERTED, PatchedFunc, PatchRecord, find_patches
from loader.unwind import ObjectCfi, Unwinder

REL32 = 1 << 31
USER_TOP = 0x7FFF_FFFF_F000
MMAP_MIN = 0x10000
RETRY_PAUSE = 0.02  # between consistency attempts: let the threads run


class ProcessGone(InputError):
    pass


@dataclass
class Stats:
    """What an apply or revert cost: `pause` is the time every thread was stopped (the last attempt)."""

    attempts: int = 0
    pause: float = 0.0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)  # what was done short of what was asked


class Session:
    """One process: its memory, maps, loaded objects, recorded patches; errors turned into ours."""

    def __init__(self, pid: int):
        check_process(pid)
        self.pid = pid
        self.mem = Memory(pid)
        self.refresh()
        self.cfi_cache: dict[str, ObjectCfi] = {}
        self._syscall = None

    def refresh(self) -> None:
        self.maps: list[Mapping] = read_maps(self.pid)
        self.objects: list[LoadedObject] = loaded_objects(self.pid, self.maps)
        self.patches = find_patches(self.maps, self.mem)

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

    def close(self) -> None:
        for obj in self.objects:
            obj.close()
        self.mem.close()


def _gone(pid: int, what: str) -> ProcessGone:
    return ProcessGone(f"process {pid} exited during {what}")


def _run(pid: int, what: str, fn):
    """Run fn(session) translating process-level failures into one-line errors."""
    session = None
    try:
        session = Session(pid)
        return fn(session)
    except ThreadGone:
        if process_alive(pid):
            raise InputError(f"a thread of process {pid} vanished during {what}; try again") from None
        raise _gone(pid, what) from None
    except TraceError as e:
        if not process_alive(pid):
            raise _gone(pid, what) from None
        tracer = tracer_of(pid)
        if tracer:
            raise InputError(f"cannot trace process {pid}: already traced by process {tracer}") from None
        raise InputError(f"cannot trace process {pid}: {e.strerror}") from None
    except (ResolveError, layout.LayoutError, arch.RelocationError, NotStopping) as e:
        raise PatchBuildError(str(e)) from None  # exit 1: the module does not fit this process
    except RemoteError as e:
        raise PatchBuildError(f"a call run in process {pid} failed: {e.strerror}") from None
    except OSError as e:
        raise PatchBuildError(str(e)) from None
    finally:
        if session is not None:
            session.close()


# ---- apply ----------------------------------------------------------------------------------------------

def module_info(path: str) -> ModuleInfo:
    """The module's metadata, its ELF headers validated first (by the differ's check) so that nothing
    trusts the offsets of a corrupt file."""
    check_header(path, read_input(path, "patch module", MAX_MODULE_SIZE))
    return read_module(path)


def load_module(path: str) -> tuple[ModuleInfo, object]:
    """The module's metadata and contents; InputError when it is not a well-formed patch module."""
    info = module_info(path)
    if info.problems:
        raise InputError(f"{os.path.basename(path)}: malformed patch module: {info.problems[0]}")
    return info, read_object(path)


def _candidates(maps: list[Mapping], size: int, anchors: list[int]) -> list[int]:
    """Page-aligned addresses for a mapping of `size` bytes in a free gap, every byte of it within rel32
    reach of every anchor; the top of each gap (away from the heap, which grows up), nearest first."""
    lo, hi = min(anchors), max(anchors)
    window = (max(hi - REL32 + layout.PAGE, MMAP_MIN), min(lo + REL32 - layout.PAGE, USER_TOP))
    taken = sorted((m.start, m.end) for m in maps)
    gaps, prev = [], MMAP_MIN
    for start, end in taken:
        if start > prev:
            gaps.append((prev, start))
        prev = max(prev, end)
    gaps.append((prev, USER_TOP))
    out = []
    for g0, g1 in gaps:
        g0, g1 = max(g0 + layout.PAGE, window[0]), min(g1 - layout.PAGE, window[1])  # a guard page each side
        at = (g1 - size) & ~(layout.PAGE - 1)
        if at >= g0:
            out.append(at)
    return sorted(out, key=lambda a: abs(a - lo))


def _max_header(info: ModuleInfo, path: str) -> int:
    big = 1 << 62
    record = PatchRecord(info.name, big, os.path.abspath(path), time.time(), [[big, big]] * len(info.targets),
                         [[big, big]] * len(info.targets), PENDING,
                         [{"name": t.name, "build_id": t.build_id} for t in info.targets],
                         [PatchedFunc(f.name, f.objname, big, big, big, big, big, big, "00" * 16, "x" * 256)
                          for f in info.funcs], [[big, big, big]] * len(info.targets))
    return len(record.encode()) + 256


def apply_patch(pid: int, path: str, timeout: float = 10.0, stack_check: bool = True) -> tuple[PatchRecord, Stats]:
    check_process(pid)  # before the (slower) module reading: a wrong PID fails at once
    info, obj = load_module(path)
    return _run(pid, "apply", lambda s: _apply(s, info, obj, path, timeout, stack_check))


@dataclass
class _Placement:
    """One mapping of the patch: the sections one target's new functions need, near that target."""

    target: str
    plan: layout.Plan
    candidates: list[int]
    base: int = 0


def _apply(s: Session, info: ModuleInfo, obj, path: str, timeout: float, stack_check: bool):
    stats = Stats()
    t0 = time.perf_counter()
    targets = match_targets(info.targets, s.objects)
    resolver = Resolver(s.objects, targets, s.mem)
    if any(r.module == info.name for r in s.patches):
        raise Refused([(info.name, f"already applied in process {s.pid} (revert it first)")])
    current = {}  # old function address -> (record, func) of the newest patch of it
    for record in s.patches:
        if record.state == ACTIVE:
            for f in record.funcs:
                current[f.old_addr] = (record, f)

    olds = _old_functions(s, info, resolver)
    placements = _placements(s, info, obj, path, olds, targets)
    seq = max((r.seq for r in s.patches), default=0) + 1
    record = None
    try:
        def map_all(caller: RemoteCaller) -> None:
            for pl in placements:
                pl.base = _map_near(caller, f"kpatch:{info.name}", pl.candidates, pl.plan.size)
                if not pl.base:
                    raise Refused([(info.name, f"could not map memory near {pl.target}")])

        _in_target(s, map_all)

        where = {pl.target: pl for pl in placements}
        images = [layout.build(pl.plan, pl.base, resolver) for pl in placements]
        funcs = []
        for func, addr, size in olds:
            pl = where[func.objname]
            new_addr, new_size = layout.function_address(pl.plan, pl.base, func.new_symbol)
            site, _ = arch.redirect(s.mem.read(addr, 16), addr, new_addr)
            prev = current.get(addr)
            funcs.append(PatchedFunc(func.name, func.objname, func.sympos, addr, size, new_addr, new_size,
                                     site, s.mem.read(site, arch.JMP_REL32_SIZE).hex(),
                                     prev[0].module if prev else None))
        record = PatchRecord(info.name, seq, os.path.abspath(path), time.time(),
                             [[pl.base, pl.plan.size] for pl in placements],
                             [[pl.base + pl.plan.code[0], pl.base + pl.plan.code[1]] for pl in placements], PENDING,
                             [{"name": t.name, "build_id": t.build_id} for t in info.targets], funcs)
        header = record.encode()
        images[0][:len(header)] = header
        for pl, image in zip(placements, images):
            s.mem.write(pl.base, bytes(image))

        def protect_all(caller: RemoteCaller) -> None:  # mapped read+write; now each part as it should be
            for pl in placements:
                for off, size, prot in pl.plan.regions:
                    if prot != PROT_READ | PROT_WRITE:
                        caller.mprotect(pl.base + off, size, prot)

        _in_target(s, protect_all)
        _register_frames(s, record, placements, resolver, stats, timeout)

        busy = []
        for f in funcs:
            prev = current.get(f.old_addr)
            lo, n = (prev[1].new_addr, prev[1].new_size) if prev else (f.old_addr, f.old_size)
            busy.append(Range(lo, lo + n, f.name))
        sites = [Range(f.site, f.site + arch.JMP_REL32_SIZE, f.name) for f in funcs]
        record.state = ACTIVE

        def commit(stopped: Stopped) -> None:
            written = []
            try:
                for f in funcs:
                    if s.mem.read(f.site, arch.JMP_REL32_SIZE).hex() != f.orig:
                        raise Refused([(f.name, "its code changed while the patch was being prepared")])
                    s.mem.write(f.site, arch.jmp_rel32(f.site, f.new_addr))
                    written.append(f)
                s.mem.write(record.start, record.encode())
            except BaseException:
                for f in reversed(written):
                    s.mem.write(f.site, bytes.fromhex(f.orig))
                raise

        _until_consistent(s, sites, busy if stack_check else None, timeout, stats, commit)
    except BaseException:
        if record is None or _deregister_frames(s, record, timeout, quiet=True):
            _unmap(s, [(pl.base, pl.plan.size) for pl in placements if pl.base])
        raise  # frames still registered: the mapping stays (no jump to it), for a later revert to remove
    stats.elapsed = time.perf_counter() - t0
    return record, stats


def _old_functions(s: Session, info: ModuleInfo, resolver: Resolver) -> list[tuple[Func, int, int]]:
    """(func, address, size) of each function the module replaces, checked against the process."""
    olds = []
    for func in info.funcs:
        addr, size = resolver.old_function(func)
        need = arch.min_redirect_size(s.mem.read(addr, 16))
        if size and size < need:
            raise Refused([(func.name, f"is {size} bytes, too short for a {need}-byte redirect")])
        if func.old_size and size and func.old_size != size:
            raise Refused([(func.name, f"is {size} bytes in the process, {func.old_size} in the module's build")])
        olds.append((func, addr, size or need))
    return olds


def _placements(s: Session, info: ModuleInfo, obj, path: str, olds, targets: dict[str, LoadedObject]):
    """One mapping plan per target, with the free addresses near it where it could go."""
    roots: dict[str, list[str]] = {}
    for func, _, _ in olds:
        roots.setdefault(func.objname, []).append(func.new_symbol)
    placements = []
    for i, (target, sections) in enumerate(layout.partition(obj, roots).items()):
        plan = layout.plan(obj, sections, _max_header(info, path) if i == 0 else 0)
        anchors = [targets[target].start, targets[target].end]
        anchors += [a + d for f, a, n in olds if f.objname == target for d in (0, n)]
        candidates = _candidates(s.maps, plan.size, anchors)
        if not candidates:
            raise Refused([(info.name, f"no free address range within ±2 GB of {target}")])
        placements.append(_Placement(target, plan, candidates))
    return placements


def _register_frames(s: Session, record: PatchRecord, placements: list[_Placement], resolver: Resolver,
                     stats: Stats, timeout: float) -> None:
    """Hand each mapping's .eh_frame to the target's unwinder, noting each in the header as it is done."""
    frames = [(pl.base + pl.plan.unwind[0], pl.base + pl.plan.unwind[1]) for pl in placements if pl.plan.unwind]
    if not frames:
        return
    registry = find_registry(s.objects, resolver)
    if registry is None:
        # No libgcc_s: the process cannot throw C++ exceptions, and what loads libgcc_s later (backtrace,
        # thread cancellation) only stops at the patch's frames. Nothing worth a warning on every C patch.
        return

    def register(caller: RemoteCaller) -> None:
        for eh_frame, obj in frames:
            caller.call_function(registry.register, eh_frame, obj)
            record.frames.append([eh_frame, obj, registry.deregister])
            s.mem.write(record.start, record.encode())

    _in_clear_thread(s, registry, register, timeout)


def _deregister_frames(s: Session, record: PatchRecord, timeout: float, quiet: bool = False,
                       then=None) -> bool:
    """Take the record's frames back from the target's unwinder (noting it in the header), then run
    then(caller) in the same stopped thread; with `quiet`, False instead of an error when that could not
    be done."""
    if not record.frames:
        return True
    registry = registry_of(s.objects, Resolver(s.objects, {}, s.mem), record.frames[0][2])

    def deregister(caller: RemoteCaller) -> None:
        while record.frames:
            eh_frame, obj, fn = record.frames[-1]
            got = caller.call_function(fn, eh_frame)
            if got != obj:  # libgcc aborts rather than return another; a different unwinder might not
                raise RemoteError(0, f"the unwinder returned {got:#x} for frames {eh_frame:#x}, not {obj:#x}")
            record.frames.pop()
            s.mem.write(record.start, record.encode())
        if then is not None:
            then(caller)

    try:
        _in_clear_thread(s, registry, deregister, timeout)
    except (ThreadGone, RemoteError, TraceError, NotStopping, Refused):
        if not quiet:
            raise
        return False
    return True


def _in_clear_thread(s: Session, registry: FrameRegistry, calls, timeout: float):
    """calls(caller) run by a thread stopped outside the unwinder and the allocator (whose locks it might
    hold), the only one stopped meanwhile; threads found inside are let go and others tried."""
    deadline = time.monotonic() + timeout
    while True:
        first = s.caller_tid
        for tid in [first] + [t for t in live_thread_ids(s.pid) if t != first]:
            try:
                with Stopped(s.pid, only=tid) as one:
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
            raise Refused([(f"process {s.pid}", "every thread stayed inside the unwinder or the allocator; "
                                                f"gave up after {timeout:g} s")])
        time.sleep(RETRY_PAUSE)


def _in_target(s: Session, calls):
    """calls(caller): system calls run by the target's main thread, the only one stopped meanwhile."""
    tid = s.caller_tid
    with Stopped(s.pid, only=tid) as one:
        caller = RemoteCaller(one.threads[tid], s.mem, s.syscall_insn)
        try:
            return calls(caller)
        finally:
            caller.restore()


def _map_near(caller: RemoteCaller, name: str, candidates: list[int], size: int) -> int:
    """Map at the first free candidate address; 0 when none could be had."""
    for at in candidates[:8]:
        try:
            base = caller.map_named(name, at, size)
        except RemoteError:
            continue  # taken meanwhile (EEXIST): the next one
        if base == at:
            return base
        caller.munmap(base, size)  # a kernel without MAP_FIXED_NOREPLACE took the address as a hint
    return 0


def _unmap(s: Session, mappings: list[tuple[int, int]]) -> None:
    """Remove patch mappings that no code jumps to (used when an apply fails)."""
    if not mappings:
        return
    try:
        def unmap_all(caller: RemoteCaller) -> None:
            for base, size in mappings:
                caller.munmap(base, size)

        _in_target(s, unmap_all)
    except (ThreadGone, RemoteError, TraceError, NotStopping):
        pass


def _until_consistent(s: Session, sites: list[Range], busy: list[Range] | None, timeout: float, stats: Stats,
                      action) -> None:
    """Stop every thread, check, run action(stopped) when safe; else release and retry until timeout."""
    deadline = time.monotonic() + timeout
    s.unwinder().warm(s.pid, thread_ids(s.pid))
    while True:
        stats.attempts += 1
        t = time.perf_counter()
        with Stopped(s.pid) as stopped:
            why = check(stopped, sites, busy, s.unwinder())
            if why is None:
                action(stopped)
        stats.pause = time.perf_counter() - t
        if why is None:
            return
        if time.monotonic() >= deadline:
            name, _, reason = why.partition(": ")
            raise Refused([(name, f"{reason}; gave up after {timeout:g} s ({stats.attempts} attempts)")])
        time.sleep(RETRY_PAUSE)


# ---- revert ---------------------------------------------------------------------------------------------

def revert_patches(pid: int, name: str | None, timeout: float = 10.0) -> tuple[list[PatchRecord], Stats]:
    """Revert patch `name`, or all patches (newest first) when name is None."""
    return _run(pid, "revert", lambda s: _revert(s, name, timeout))


def _revert(s: Session, name: str | None, timeout: float):
    stats = Stats()
    t0 = time.perf_counter()
    if name is None:
        todo = list(reversed(s.patches))
    else:
        todo = [r for r in s.patches if r.module == name]
        if not todo:
            raise InputError(f"no patch {name} in process {s.pid}")
        newer = [r.module for r in s.patches if r.seq > todo[0].seq
                 and any(f.prev == name for f in r.funcs)]
        if newer:
            raise Refused([(name, f"patch {newer[-1]} is applied on top of it: revert {newer[-1]} first")])
    done = []
    for record in todo:
        _revert_one(s, record, timeout, stats)
        done.append(record)
    stats.elapsed = time.perf_counter() - t0
    return done, stats


def _revert_one(s: Session, record: PatchRecord, timeout: float, stats: Stats) -> None:
    funcs = record.funcs if record.state == ACTIVE else []
    sites = [Range(f.site, f.site + arch.JMP_REL32_SIZE, f.name) for f in funcs]
    busy = [Range(lo, hi, f"{record.module} (patch code)") for lo, hi in record.code]

    def restore(stopped: Stopped) -> None:
        for f in funcs:
            if s.mem.read(f.site, arch.JMP_REL32_SIZE) != arch.jmp_rel32(f.site, f.new_addr):
                raise Refused([(f.name, f"its code no longer jumps to patch {record.module}")])
        for f in funcs:
            s.mem.write(f.site, bytes.fromhex(f.orig))
        record.state = REVERTED  # what a later run sees should the unmap below fail
        s.mem.write(record.start, record.encode())
        if record.frames:
            return  # deregistered first, below, with the other threads running
        thread = stopped.threads.get(s.caller_tid) or next(iter(stopped.threads.values()))
        caller = RemoteCaller(thread, s.mem, s.syscall_insn)
        try:
            unmap(caller)
        finally:
            caller.restore()

    def unmap(caller: RemoteCaller) -> None:
        for start, size in record.mappings:
            caller.munmap(start, size)

    _until_consistent(s, sites, busy, timeout, stats, restore)
    if record.frames:
        # no thread has the patch's code on its stack nor can enter it: no unwind needs its frames
        _deregister_frames(s, record, timeout, then=unmap)


# ---- list -----------------------------------------------------------------------------------------------

def list_patches(pid: int) -> list[PatchRecord]:
    return _run(pid, "list", lambda s: s.patches)
