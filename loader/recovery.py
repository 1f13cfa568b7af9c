"""The frame every command that changes a target runs in (`changing`), and the recovery it starts with.

Inside `changing`, SIGINT/SIGTERM/SIGHUP are held (loader.critical: acted on at the safe points the work
names), and what a patch-ctl killed midway left is finished first (`recover`: holding the target's lock
proves that none is running, so a record not ACTIVE is stale). On the way out it records what the work cost
(`Stats.elapsed`) and a signal that came too late to stop it (`Stats.late_signal`), and reports a process
that died meanwhile.
"""
from __future__ import annotations

import contextlib
import time

from patch_build.common.errors import Refused
from patch_build.loader.critical import Critical
from patch_build.loader.ptrace import ThreadGone
from patch_build.loader.remote import RemoteCaller
from patch_build.loader.session import Session, in_target, still_alive
from patch_build.loader.state import ACTIVE, open_memfds, orphans
from patch_build.loader.undo import take_out


@contextlib.contextmanager
def changing(s: Session, timeout: float):
    """with changing(s, timeout) as critical: the work on the target, `critical` its safe points."""
    t0 = time.perf_counter()
    with Critical() as critical:
        recover(s, timeout, critical)
        yield critical
    if not still_alive(s.pid):  # killed while it was being changed: what was written went with it
        raise ThreadGone(s.pid)
    s.stats.late_signal = critical.late
    s.stats.elapsed = time.perf_counter() - t0


def recover(s: Session, timeout: float, critical: Critical) -> None:
    """Finish what a patch-ctl killed midway left in the target (holding the target's lock proves none is
    running): a record not ACTIVE is reverted, whatever step it stopped at; s.patches then holds only
    ACTIVE ones."""
    stuck = set()
    for record in [r for r in s.patches if r.state != ACTIVE]:
        left = record.state
        try:
            take_out(s, record, timeout, critical)
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
