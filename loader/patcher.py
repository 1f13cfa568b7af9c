"""apply, revert and list patches in a running process: the library behind `patch-ctl`.

apply: read the module, match its targets (build-ids), resolve what it references, then with one thread
stopped map memory near the target, relocate and write the patch there, and register its unwind
information (`.eh_frame`) with the target's unwinder; then stop every thread, check consistency and write
the redirecting jumps, retrying until the timeout. Only that last step stops the whole process. Whatever
fails, the frames are deregistered, the mapping is removed and the code left as it was.
revert: with every thread stopped and none inside the patch, put back the bytes each jump replaced (the
original code, or the jump of the patch it was stacked on); then, the other threads running again,
deregister the patch's frames and unmap it. A record that owns a dlopen handle (loader.libraries: its new
functions live in a shared library) also waits for that library's code to be off every stack, and
dlcloses it before the unmap; such records are written by `commit`, the step apply ends with.

Atomicity (docs/design.md): the record in the target says what is under way before each step (a
write-ahead log); SIGINT/SIGTERM/SIGHUP are held and acted on only at safe points (loader.critical); one
patch-ctl works on a target at a time (loader.lock), and the next one finishes what a killed one left
(recovery: any record not ACTIVE is reverted). The target's registers are put back after every remote
call. What remains: a patch-ctl killed by SIGKILL during one remote system call or one jump write leaves
that call or those writes half done until the next patch-ctl runs (microseconds).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from common.errors import InputError, Refused
from elfcore.read import read_object
from loader import dynlink, faults, layout, x86_64 as arch
from loader.consistency import Range, check
from loader.critical import Critical
from loader.frames import find_registry, registry_of
from loader.modulecheck import check_module
from loader.objects import LoadedObject
from loader.procfs import Mapping, check_process
from loader.ptrace import NotStopping, Stopped, ThreadGone, TraceError, thread_ids
from loader.remote import PROT_READ, PROT_WRITE, RemoteCaller, RemoteError
from loader.resolve import Resolver, match_targets
from loader.session import RETRY_PAUSE, Session, Stats, in_clear_thread, in_target, run, still_alive
from loader.state import (ACTIVE, APPLYING, PENDING, REVERTED, REVERTING, PatchedFunc, PatchRecord, open_memfds,
                          orphans)
from patchformat.integrity import check_trusted, read_module_bytes
from patchformat.module import Func, ModuleInfo, read_module

REL32 = 1 << 31
USER_TOP = 0x7FFF_FFFF_F000
MMAP_MIN = 0x10000


# ---- apply ----------------------------------------------------------------------------------------------

def module_info(path: str) -> ModuleInfo:
    """The module's metadata; its ELF headers are validated and its digest checked first (a mismatch is
    the first of its problems), so that nothing trusts the offsets of a corrupt file."""
    return read_module(path)


def load_module(path: str, trusted: dict | None = None) -> tuple[ModuleInfo, object]:
    """The module's metadata and contents, read from one read of the file: InputError when it is not a
    well-formed patch module (digest included); Refused when `trusted` keys (patchformat.integrity) are given
    and none of them signed it, or when the loader cannot apply its relocations."""
    data = read_module_bytes(path)
    info = read_module(path, data)
    if info.problems:
        raise InputError(f"{os.path.basename(path)}: malformed patch module: {info.problems[0]}")
    if trusted is not None:
        check_trusted(info.name, info.seal, trusted)
    obj = read_object(path, data)
    check_module(path, obj, info)
    return info, obj


def free_addresses_near(maps: list[Mapping], size: int, anchors: list[int]) -> list[int]:
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


def apply_patch(pid: int, path: str, timeout: float = 10.0, stack_check: bool = True,
                trusted: dict | None = None) -> tuple[PatchRecord, Stats]:
    """`trusted`: fingerprint -> public key (patchformat.integrity.load_trusted_keys); only modules one of them
    signed are applied."""
    check_process(pid)  # before the (slower) module reading: a wrong PID fails at once
    info, obj = load_module(path, trusted)
    return run(pid, "apply", lambda s: _apply(s, info, obj, path, timeout, stack_check), wait=timeout)


@dataclass
class _Placement:
    """One mapping of the patch: the sections one target's new functions need, near that target."""

    target: str
    plan: layout.Plan
    candidates: list[int]
    base: int = 0


class _Recording:
    """A resolver that remembers every address it gave: what the patch's code reaches in the process."""

    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.addresses: list[int] = []

    def __call__(self, sym):
        addr, size = self.resolver(sym)
        self.addresses.append(addr)
        return addr, size


def _apply(s: Session, info: ModuleInfo, obj, path: str, timeout: float, stack_check: bool):
    t0 = time.perf_counter()
    targets = match_targets(info.targets, s.objects)
    resolver = Resolver(s.objects, targets, s.mem)
    with Critical() as critical:
        recover(s, timeout, critical)
        if any(r.module == info.name for r in s.patches):
            raise Refused([(info.name, f"already applied in process {s.pid} (revert it first)")])
        current = current_patches(s.patches)
        olds = _old_functions(s, info, resolver)
        placements = _placements(s, info, obj, path, olds, targets)
        seq = max((r.seq for r in s.patches), default=0) + 1
        record = None
        try:
            critical.safe_point()

            def map_all(caller: RemoteCaller) -> None:
                for pl in placements:
                    pl.base = map_near(caller, f"kpatch:{info.name}", pl.candidates, pl.plan.size)
                    if not pl.base:
                        raise Refused([(info.name, f"could not map memory near {pl.target}")])

            in_target(s, map_all)
            faults.point("mapped", s.pid)
            critical.safe_point()

            where = {pl.target: pl for pl in placements}
            reached = _Recording(resolver)
            images = [layout.build(pl.plan, pl.base, reached) for pl in placements]
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
                                 [[pl.base + pl.plan.code[0], pl.base + pl.plan.code[1]] for pl in placements],
                                 PENDING, [{"name": t.name, "build_id": t.build_id} for t in info.targets], funcs,
                                 depends=_depends(s.patches, funcs, reached.addresses))
            header = record.encode()
            images[0][:len(header)] = header
            for pl, image in zip(placements, images):
                s.mem.write(pl.base, bytes(image))
            faults.point("written", s.pid)
            critical.safe_point()

            def protect_all(caller: RemoteCaller) -> None:  # mapped read+write; now each part as it should be
                for pl in placements:
                    for off, size, prot in pl.plan.regions:
                        if prot != PROT_READ | PROT_WRITE:
                            caller.mprotect(pl.base + off, size, prot)

            in_target(s, protect_all)
            faults.point("protected", s.pid)
            critical.safe_point()
            _register_frames(s, record, placements, resolver, timeout)
            critical.safe_point()

            commit(s, record, current, stack_check, timeout, critical)
        except BaseException:
            if record is None or record.state != ACTIVE:
                discard(s, record, [(pl.base, pl.plan.size) for pl in placements if pl.base], timeout)
            raise
    if not still_alive(s.pid):  # killed while it was being patched: what was written went with it
        raise ThreadGone(s.pid)
    s.stats.late_signal = critical.late
    s.stats.elapsed = time.perf_counter() - t0
    return record, s.stats


def current_patches(patches: list[PatchRecord]) -> dict[int, tuple[PatchRecord, PatchedFunc]]:
    """Old function address -> (record, func) of the newest active patch of it."""
    current = {}
    for record in patches:
        if record.state == ACTIVE:
            for f in record.funcs:
                current[f.old_addr] = (record, f)
    return current


def commit(s: Session, record: PatchRecord, current: dict, stack_check: bool, timeout: float,
           critical: Critical) -> None:
    """Write every jump of `record` (written to the target, PENDING) with every thread stopped, none of
    them in a function being replaced (nor in the patch code now running for it): ACTIVE after."""
    busy = []
    for f in record.funcs:
        prev = current.get(f.old_addr)
        lo, n = (prev[1].new_addr, prev[1].new_size) if prev else (f.old_addr, f.old_size)
        busy.append(Range(lo, lo + n, f.name))
    sites = [Range(f.site, f.site + arch.JMP_REL32_SIZE, f.name) for f in record.funcs]

    def write_jumps(stopped: Stopped) -> None:
        for f in record.funcs:
            if s.mem.read(f.site, arch.JMP_REL32_SIZE).hex() != f.orig:
                raise Refused([(f.name, "its code changed while the patch was being prepared")])
        _switch(s, record, [(f, arch.jmp_rel32(f.site, f.new_addr), bytes.fromhex(f.orig)) for f in record.funcs],
                APPLYING, ACTIVE, PENDING, "commit")

    _until_consistent(s, sites, busy if stack_check else None, timeout, critical, write_jumps)


def _depends(patches: list[PatchRecord], funcs: list[PatchedFunc], reached: list[int]) -> list[str]:
    """The earlier patches this one's code reaches: one it stacks on, or one whose code or replaced
    functions it calls (a revert of that one would change what this one runs)."""
    out = {f.prev for f in funcs if f.prev}
    for r in patches:
        spans = [(lo, hi) for lo, hi in r.code] + [(f.old_addr, f.old_addr + f.old_size) for f in r.funcs]
        if any(lo <= a < hi for a in reached for lo, hi in spans):
            out.add(r.module)
    return sorted(out)


def _switch(s: Session, record: PatchRecord, writes: list[tuple[PatchedFunc, bytes, bytes]], during: str,
            done: str, undone: str, step: str) -> None:
    """Write each (func, new bytes, old bytes) with every thread stopped, the record saying `during` while
    the writes are under way (what a patch-ctl killed midway leaves for the next one to finish) and `done`
    after them. Any failure midway puts every byte back and the record in state `undone`."""
    written = []
    try:
        record.state = during
        s.mem.write(record.start, record.encode())
        faults.point(f"{step}-record", s.pid)
        for f, new, old in writes:
            s.mem.write(f.site, new)
            written.append((f, old))
            faults.point(f"{step}-write", s.pid)
        record.state = done
        s.mem.write(record.start, record.encode())
    except BaseException:
        for f, old in reversed(written):
            s.mem.write(f.site, old)
        record.state = undone
        s.mem.write(record.start, record.encode())
        raise
    faults.point(f"{step}-done", s.pid)


def discard(s: Session, record: PatchRecord | None, mappings: list[tuple[int, int]], timeout: float) -> None:
    """Undo an apply that did not commit: nothing jumps to the patch, so its frames are deregistered and
    its mappings removed. Frames that cannot be deregistered (or whose registration is unknown) keep the
    mapping: the record stays, for a later revert or recovery."""
    try:
        if record is not None and not _deregister_frames(s, record, timeout, quiet=True):
            return
        _unmap(s, mappings)
    except (ThreadGone, TraceError, OSError):
        pass  # the process is gone, or the failure itself is what is reported


def _old_functions(s: Session, info: ModuleInfo, resolver: Resolver) -> list[tuple[Func, int, int]]:
    """(func, address, size) of each function the module replaces, found by name in the target's own
    symbol table (the module's address and size are claims, checked against it) and in its code."""
    olds = []
    for func in info.funcs:
        addr, size = resolver.old_function(func)
        code = resolver.targets[func.objname].maps
        if not any(m.executable and addr in m and addr + max(size, 1) <= m.end for m in code):
            raise Refused([(func.name, f"its address {addr:#x} is not in the code of {func.objname}")])
        need = arch.min_redirect_size(s.mem.read(addr, 16))
        if size and size < need:
            raise Refused([(func.name, f"is {size} bytes, too short for a {need}-byte redirect")])
        if func.old_size != size:
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
        candidates = free_addresses_near(s.maps, plan.size, anchors)
        if not candidates:
            raise Refused([(info.name, f"no free address range within ±2 GB of {target}")])
        placements.append(_Placement(target, plan, candidates))
    return placements


def _register_frames(s: Session, record: PatchRecord, placements: list[_Placement], resolver: Resolver,
                     timeout: float) -> None:
    """Hand each mapping's .eh_frame to the target's unwinder, noting each in the header before the call
    and confirming it after."""
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
            record.frames.append([eh_frame, obj, registry.deregister, 0])
            s.mem.write(record.start, record.encode())
            caller.call_function(registry.register, eh_frame, obj)
            record.frames[-1][3] = 1
            s.mem.write(record.start, record.encode())
            faults.point("registered", s.pid)

    in_clear_thread(s, registry, register, timeout)


def _deregister_frames(s: Session, record: PatchRecord, timeout: float, quiet: bool = False,
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


def map_near(caller: RemoteCaller, name: str, candidates: list[int], size: int) -> int:
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

        in_target(s, unmap_all)
    except (ThreadGone, RemoteError, TraceError, NotStopping):
        pass


def _until_consistent(s: Session, sites: list[Range], busy: list[Range] | None, timeout: float,
                      critical: Critical, action) -> None:
    """Stop every thread, check, run action(stopped) when safe; else release and retry until timeout. Each
    retry is a safe point: nothing has been written to code yet."""
    deadline = time.monotonic() + timeout
    s.unwinder().warm(s.pid, thread_ids(s.pid))
    while True:
        critical.safe_point()
        s.stats.attempts += 1
        with s.stopped() as stopped:
            why = check(stopped, sites, busy, s.unwinder())
            if why is None:
                action(stopped)
        if why is None:
            return
        if time.monotonic() >= deadline:
            name, _, reason = why.partition(": ")
            raise Refused([(name, f"{reason}; gave up after {timeout:g} s ({s.stats.attempts} attempts)")])
        time.sleep(RETRY_PAUSE)


# ---- revert ---------------------------------------------------------------------------------------------

def revert_patches(pid: int, name: str | None, timeout: float = 10.0) -> tuple[list[PatchRecord], Stats]:
    """Revert patch `name`, or all patches (newest first) when name is None."""
    return run(pid, "revert", lambda s: revert_records(s, name, timeout), wait=timeout)


def revert_records(s: Session, name: str | None, timeout: float):
    t0 = time.perf_counter()
    done = []
    with Critical() as critical:
        recover(s, timeout, critical)
        if name is None:
            todo = list(reversed(s.patches))
        else:
            todo = [r for r in s.patches if r.module == name]
            if not todo:
                raise InputError(f"no patch {name} in process {s.pid}")
            later = [r for r in s.patches if r.seq > todo[0].seq and name in r.depends + [f.prev for f in r.funcs]]
            if later:
                other = later[-1].module
                raise Refused([(name, f"patch {other} is applied on top of it (it replaces or calls functions "
                                      f"this one replaces): revert {other} first")])
        for record in todo:
            critical.safe_point()  # between two patches: each one is either reverted or untouched
            _revert_one(s, record, timeout, critical)
            done.append(record)
    if not still_alive(s.pid):
        raise ThreadGone(s.pid)
    s.stats.late_signal = critical.late
    s.stats.elapsed = time.perf_counter() - t0
    return done, s.stats


def _revert_one(s: Session, record: PatchRecord, timeout: float, critical: Critical) -> None:
    """Put back the bytes every jump of `record` replaced, then deregister its frames and unmap it. Also
    finishes a record a killed patch-ctl left in any state: only the sites that still jump to the patch
    are restored."""
    jump = {f.site: arch.jmp_rel32(f.site, f.new_addr) for f in record.funcs}
    funcs = [] if record.state in (PENDING, REVERTED) else record.funcs
    sites = [Range(f.site, f.site + arch.JMP_REL32_SIZE, f.name) for f in funcs]
    busy = [Range(lo, hi, f"{record.module} (patch code)") for lo, hi in record.code]
    if record.handle:  # the library it loaded goes too: its code must be off every stack first
        busy += [Range(lo, hi, f"{record.module} (library {os.path.basename(record.library)})")
                 for lo, hi in dynlink.library_code(s.objects, record.library)]
    unmap_now = not record.frames and not record.handle

    def restore(stopped: Stopped) -> None:
        writes = []
        for f in funcs:
            now = s.mem.read(f.site, arch.JMP_REL32_SIZE)
            if now == jump[f.site]:
                writes.append((f, bytes.fromhex(f.orig), now))
            elif record.state == ACTIVE:
                raise Refused([(f.name, f"its code no longer jumps to patch {record.module}")])
        _switch(s, record, writes, REVERTING, REVERTED, record.state, "revert")
        if unmap_now:
            thread = stopped.threads.get(s.caller_tid) or next(iter(stopped.threads.values()))
            caller = RemoteCaller(thread, s.mem, s.syscall_insn)
            try:
                unmap(caller)
            finally:
                caller.restore()

    def unmap(caller: RemoteCaller) -> None:
        for start, size in record.mappings:
            caller.munmap(start, size)
            faults.point("unmapped", s.pid)

    if record.state != REVERTED or unmap_now or record.handle:
        _until_consistent(s, sites, busy if funcs or record.handle else [], timeout, critical, restore)
    if record.handle:
        # forgotten first: a patch-ctl killed during the call leaves the library loaded, never closed twice
        handle, record.handle = record.handle, 0
        s.mem.write(record.start, record.encode())
        dynlink.dlclose(s, handle, record.module, timeout)
    if not unmap_now:
        # no thread has the patch's code on its stack nor can enter it: no unwind needs its frames
        _deregister_frames(s, record, timeout, then=unmap)


# ---- recovery -------------------------------------------------------------------------------------------

def recover(s: Session, timeout: float, critical: Critical) -> None:
    """Finish what a patch-ctl killed midway left in the target (holding the target's lock proves none is
    running): a record not ACTIVE is reverted, whatever step it stopped at; s.patches then holds only
    ACTIVE ones."""
    stuck = set()
    for record in [r for r in s.patches if r.state != ACTIVE]:
        left = record.state
        try:
            _revert_one(s, record, timeout, critical)
            s.stats.warnings.append(f"patch {record.module} was left {left} by an interrupted patch-ctl: "
                                    "reverted it (its code is no longer used and its memory is unmapped)")
        except Refused as e:
            stuck.add(record.module)
            s.stats.warnings.append(f"patch {record.module} was left {left} by an interrupted patch-ctl: {e}")
    s.refresh()
    leftovers, fds = orphans(s.maps, s.patches), open_memfds(s.pid)
    if leftovers or fds:
        def clean(caller: RemoteCaller) -> None:
            for fd in fds:
                caller.close(fd)
            for start, size in leftovers:
                caller.munmap(start, size)

        in_target(s, clean)
        s.stats.warnings.append("removed patch memory an interrupted patch-ctl left unused")
        s.refresh()
    s.patches = [r for r in s.patches if r.state == ACTIVE or r.module in stuck]


# ---- list -----------------------------------------------------------------------------------------------

def list_patches(pid: int, timeout: float = 10.0) -> tuple[list[PatchRecord], Stats]:
    """The patches applied in the process, oldest first, after finishing what an interrupted patch-ctl left
    (when no other patch-ctl is at work on it: then its records are listed as they are)."""

    def listing(s: Session):
        if s.lock.acquired:
            with Critical() as critical:
                recover(s, timeout, critical)
        return s.patches, s.stats

    return run(pid, "list", listing, wait=None)
