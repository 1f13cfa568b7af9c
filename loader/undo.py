"""Taking a record out of the target: `take_out` (revert, and recovery of what a killed patch-ctl left, in
any state) and `discard` (an apply that did not commit).

take_out: with every thread stopped and none inside the patch, put back the bytes each jump replaced (the
original code, or the jump of the patch it was stacked on); then, the other threads running again,
deregister the patch's frames and unmap it. A record that owns a dlopen handle (loader.libraries: its new
functions live in a shared library) also waits for that library's code to be off every stack, and dlcloses
it before the unmap.
"""
from __future__ import annotations

import os

from patch_build.common.errors import Refused
from patch_build.loader import dynlink, faults, x86_64 as arch
from patch_build.loader.consistency import Range, until_consistent
from patch_build.loader.critical import Critical
from patch_build.loader.frames import deregister_frames
from patch_build.loader.hooks import POST_REVERT, PRE_REVERT, run_hooks
from patch_build.loader.jumps import switch
from patch_build.loader.placement import remove_mappings
from patch_build.loader.ptrace import Stopped, ThreadGone, TraceError
from patch_build.loader.remote import RemoteCaller
from patch_build.loader.session import Session
from patch_build.loader.state import ACTIVE, PENDING, REVERTED, REVERTING, PatchRecord


def take_out(s: Session, record: PatchRecord, timeout: float, critical: Critical) -> None:
    """Put back the bytes every jump of `record` replaced, then deregister its frames and unmap it, its
    revert hooks run before and after the jumps go. Also finishes a record a killed patch-ctl left in any
    state (no hooks then): only the sites that still jump to the patch are restored."""
    jump = {f.site: arch.jmp_rel32(f.site, f.new_addr) for f in record.funcs}
    funcs = [] if record.state in (PENDING, REVERTED) else record.funcs
    sites = [Range(f.site, f.site + arch.JMP_REL32_SIZE, f.name) for f in funcs]
    busy = [Range(lo, hi, f"{record.module} (patch code)") for lo, hi in record.code]
    if record.handle:  # the library it loaded goes too: its code must be off every stack first
        busy += [Range(lo, hi, f"{record.module} (library {os.path.basename(record.library)})")
                 for lo, hi in dynlink.library_code(s.objects, record.library)]
    live = record.state == ACTIVE  # a revert, not the recovery of an interrupted apply or revert: hooks run
    if live:
        run_hooks(s, record, PRE_REVERT, timeout)
    unmap_now = not record.frames and not record.handle and not (live and record.hooks.get(POST_REVERT))

    def restore(stopped: Stopped) -> None:
        writes = []
        for f in funcs:
            now = s.mem.read(f.site, arch.JMP_REL32_SIZE)
            if now == jump[f.site]:
                writes.append((f, bytes.fromhex(f.orig), now))
            elif record.state == ACTIVE:
                raise Refused([(f.name, f"its code no longer jumps to patch {record.module}")])
        switch(s, record, writes, REVERTING, REVERTED, record.state, "revert")
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
        until_consistent(s, sites, busy if funcs or record.handle else [], timeout, critical, restore)
    if live:
        run_hooks(s, record, POST_REVERT, timeout)  # its code is still mapped
    if record.handle:
        # forgotten first: a patch-ctl killed during the call leaves the library loaded, never closed twice
        handle, record.handle = record.handle, 0
        s.mem.write(record.start, record.encode())
        dynlink.dlclose(s, handle, record.module, timeout)
    if not unmap_now:
        # no thread has the patch's code on its stack nor can enter it: no unwind needs its frames
        deregister_frames(s, record, timeout, then=unmap)


def discard(s: Session, record: PatchRecord | None, mappings: list[tuple[int, int]], timeout: float) -> None:
    """Undo an apply that did not commit: nothing jumps to the patch, so its frames are deregistered and
    its mappings removed. Frames that cannot be deregistered (or whose registration is unknown) keep the
    mapping: the record stays, for a later revert or recovery."""
    try:
        if record is not None and not deregister_frames(s, record, timeout, quiet=True):
            return
        remove_mappings(s, mappings)
    except (ThreadGone, TraceError, OSError):
        pass  # the process is gone, or the failure itself is what is reported
