"""revert and list patches in a running process: the library behind `patch-ctl revert` and `list`.

A patch is reverted newest first, or from under later ones unless one of them depends on it (stacks on a
function it replaced, or reaches its code: `PatchRecord.depends`); each record is taken out by loader.undo.
`list` first finishes what an interrupted patch-ctl left (loader.recovery) when no other is at work.
"""
from __future__ import annotations

from patch_build.common.errors import InputError, Refused
from patch_build.loader.critical import Critical
from patch_build.loader.recovery import changing, recover
from patch_build.loader.session import Session, Stats, run
from patch_build.loader.state import PatchRecord
from patch_build.loader.undo import take_out


def revert_patches(pid: int, name: str | None, timeout: float = 10.0) -> tuple[list[PatchRecord], Stats]:
    """Revert patch `name`, or all patches (newest first) when name is None."""
    return run(pid, "revert", lambda s: revert_records(s, name, timeout), wait=timeout)


def revert_records(s: Session, name: str | None, timeout: float):
    """Revert `name` (or every patch, newest first) in the open session, after recovery (loader.recovery)."""
    done = []
    with changing(s, timeout) as critical:
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
            take_out(s, record, timeout, critical)
            done.append(record)
    return done, s.stats


def list_patches(pid: int, timeout: float = 10.0) -> tuple[list[PatchRecord], Stats]:
    """The patches applied in the process, oldest first, after finishing what an interrupted patch-ctl left
    (when no other patch-ctl is at work on it: then its records are listed as they are)."""

    def listing(s: Session):
        if s.lock.acquired:
            with Critical() as critical:
                recover(s, timeout, critical)
        return s.patches, s.stats

    return run(pid, "list", listing, wait=None)
