"""apply a patch module to a running process: the library behind `patch-ctl apply`.

Read the module (loader.patchmodule), match its targets (build-ids), resolve what it references, then with
one thread stopped map memory near each target (loader.placement), relocate and write the patch there, and
register its unwind information with the target's unwinder (loader.frames); then stop every thread, check
consistency and write the redirecting jumps, retrying until the timeout (loader.jumps). Only that last step
stops the whole process. The patch's hooks run around that step (loader.hooks). Whatever fails (a pre_apply
hook that says no included), the frames are deregistered, the mapping is removed and the code left as it
was (loader.undo).

Atomicity (docs/design.md): the record in the target says what is under way before each step (a
write-ahead log); SIGINT/SIGTERM/SIGHUP are held and acted on only at safe points (loader.critical); one
patch-ctl works on a target at a time (loader.lock), and the next one finishes what a killed one left
(loader.recovery). The target's registers are put back after every remote call. What remains: a patch-ctl
killed by SIGKILL during one remote system call or one jump write leaves that call or those writes half done
until the next patch-ctl runs (microseconds).
"""
from __future__ import annotations

import os
import time

from patch_build.common.errors import Refused
from patch_build.patchformat.module import Func, ModuleInfo
from patch_build.loader import faults, layout, x86_64 as arch
from patch_build.loader.frames import register_frames
from patch_build.loader.hooks import POST_APPLY, PRE_APPLY, run_hooks
from patch_build.loader.jumps import commit
from patch_build.loader.patchmodule import load_module
from patch_build.loader.placement import map_near, placements as plan_placements
from patch_build.loader.procfs import check_process
from patch_build.loader.recovery import changing
from patch_build.loader.remote import PROT_READ, PROT_WRITE, RemoteCaller
from patch_build.loader.resolve import Resolver, match_targets
from patch_build.loader.session import Session, Stats, in_target, run
from patch_build.loader.state import ACTIVE, PENDING, PatchedFunc, PatchRecord, current_patches
from patch_build.loader.undo import discard


def apply_patch(pid: int, path: str, timeout: float = 10.0, stack_check: bool = True,
                trusted: dict | None = None) -> tuple[PatchRecord, Stats]:
    """`trusted`: fingerprint -> public key (patchformat.integrity.load_trusted_keys); only modules one of them
    signed are applied."""
    check_process(pid)  # before the (slower) module reading: a wrong PID fails at once
    info, obj = load_module(path, trusted)
    return run(pid, "apply", lambda s: _apply(s, info, obj, path, timeout, stack_check), wait=timeout)


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
    targets = match_targets(info.targets, s.objects)
    resolver = Resolver(s.objects, targets, s.mem)
    with changing(s, timeout) as critical:
        if any(r.module == info.name for r in s.patches):
            raise Refused([(info.name, f"already applied in process {s.pid} (revert it first)")])
        current = current_patches(s.patches)
        olds = _old_functions(s, info, resolver)
        placements = plan_placements(s, info, obj, path, olds, targets)
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
            hooks: dict[str, list[list]] = {}
            for h in info.hooks:  # laid out with the first target's functions (loader.placement)
                hooks.setdefault(h.stage, []).append(
                    [h.function, layout.function_address(placements[0].plan, placements[0].base, h.function)[0]])
            record = PatchRecord(info.name, seq, os.path.abspath(path), time.time(),
                                 [[pl.base, pl.plan.size] for pl in placements],
                                 [[pl.base + pl.plan.code[0], pl.base + pl.plan.code[1]] for pl in placements],
                                 PENDING, [{"name": t.name, "build_id": t.build_id} for t in info.targets], funcs,
                                 depends=_depends(s.patches, funcs, reached.addresses), hooks=hooks)
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
            register_frames(s, record, [(pl.base + pl.plan.unwind[0], pl.base + pl.plan.unwind[1])
                                         for pl in placements if pl.plan.unwind], resolver, timeout)
            critical.safe_point()
            run_hooks(s, record, PRE_APPLY, timeout)
            critical.safe_point()

            commit(s, record, current, stack_check, timeout, critical)
        except BaseException:
            if record is None or record.state != ACTIVE:
                discard(s, record, [(pl.base, pl.plan.size) for pl in placements if pl.base], timeout)
            raise
        run_hooks(s, record, POST_APPLY, timeout)
    return record, s.stats


def _depends(patches: list[PatchRecord], funcs: list[PatchedFunc], reached: list[int]) -> list[str]:
    """The earlier patches this one's code reaches: one it stacks on, or one whose code or replaced
    functions it calls (a revert of that one would change what this one runs)."""
    out = {f.prev for f in funcs if f.prev}
    for r in patches:
        spans = [(lo, hi) for lo, hi in r.code] + [(f.old_addr, f.old_addr + f.old_size) for f in r.funcs]
        if any(lo <= a < hi for a in reached for lo, hi in spans):
            out.add(r.module)
    return sorted(out)


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
