"""The redirecting jumps of a record, written (`commit`) and put back (`switch`, for revert), with every thread
stopped and the record saying what is under way before the first write (a write-ahead log: what a patch-ctl
killed midway leaves, the next one finishes; loader.recovery)."""
from __future__ import annotations

from patch_build.common.errors import Refused
from patch_build.loader import faults, x86_64 as arch
from patch_build.loader.consistency import Range, until_consistent
from patch_build.loader.critical import Critical
from patch_build.loader.ptrace import Stopped
from patch_build.loader.session import Session
from patch_build.loader.state import ACTIVE, APPLYING, PENDING, PatchedFunc, PatchRecord


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
        switch(s, record, [(f, arch.jmp_rel32(f.site, f.new_addr), bytes.fromhex(f.orig)) for f in record.funcs],
                APPLYING, ACTIVE, PENDING, "commit")

    until_consistent(s, sites, busy if stack_check else None, timeout, critical, write_jumps)


def switch(s: Session, record: PatchRecord, writes: list[tuple[PatchedFunc, bytes, bytes]], during: str,
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
