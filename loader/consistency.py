"""The consistency check made with every thread stopped, before code is redirected or restored.

No thread may be executing the bytes about to be overwritten (always checked); and no thread may have a
function being replaced on its stack: its PC, a return address found by CFI unwinding, or, past the point
where unwinding stops, any stack word pointing into it (conservative). `until_consistent` stops every
thread, checks, and acts when it is safe, retrying (the threads running in between) until a timeout.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

from patch_build.common.errors import Refused
from patch_build.loader.critical import Critical
from patch_build.loader.ptrace import Stopped, thread_ids
from patch_build.loader.session import RETRY_PAUSE, Session
from patch_build.loader.unwind import StackUnknown, Unwinder


@dataclass(frozen=True)
class Range:
    lo: int
    hi: int  # exclusive for PCs; a return address may equal hi (a call ending a noreturn function)
    name: str


class Ranges:
    def __init__(self, ranges: list[Range]):
        self.ranges = sorted(ranges, key=lambda r: r.lo)
        self.los = [r.lo for r in self.ranges]

    def find(self, addr: int, inclusive_end: bool = False) -> Range | None:
        """The range holding addr (ranges are distinct functions: they do not overlap)."""
        i = bisect.bisect_right(self.los, addr) - 1
        if i >= 0:
            r = self.ranges[i]
            if addr < r.hi or (inclusive_end and addr == r.hi):
                return r
        return None


def check(stopped: Stopped, overwritten: list[Range], busy: list[Range] | None, unwinder: Unwinder) -> str | None:
    """None when it is safe to proceed, else why not (naming the function and thread)."""
    sites = Ranges(overwritten)
    active = Ranges(busy or [])
    for tid, thread in sorted(stopped.threads.items()):
        regs = thread.regs
        hit = sites.find(regs.rip)
        if hit:
            return f"{hit.name}: thread {tid} is executing the bytes to be overwritten (pc {regs.rip:#x})"
        if not busy:
            continue
        pcs, rest = unwinder.code_addresses(regs.rip, regs.rsp, regs.rbp)
        for depth, pc in enumerate(pcs):
            hit = active.find(pc, inclusive_end=depth > 0)
            if hit:
                where = "running" if depth == 0 else f"on its stack (frame {depth})"
                return f"{hit.name}: thread {tid} has it {where}"
        if rest:
            try:
                words = unwinder.scan(*rest)
            except StackUnknown as e:
                return f"{busy[0].name}: thread {tid}: {e}"
            for word in words:
                hit = active.find(word, inclusive_end=True)
                if hit:
                    return f"{hit.name}: thread {tid} may have it on its stack (found {word:#x}, no CFI to unwind)"
    return None


def until_consistent(s: Session, sites: list[Range], busy: list[Range] | None, timeout: float,
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
