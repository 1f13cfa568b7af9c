"""Where a patch goes in the target: page-aligned free address ranges within rel32 reach (±2 GB) of what
it patches, one mapping per target object (`Placement`), mapped by one stopped thread of the target and
removed again when an apply fails before anything jumps there."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from patch_build.common.errors import Refused
from patch_build.patchformat.module import ModuleInfo
from patch_build.loader import layout
from patch_build.loader.objects import LoadedObject
from patch_build.loader.procfs import Mapping
from patch_build.loader.ptrace import NotStopping, ThreadGone, TraceError
from patch_build.loader.remote import RemoteCaller, RemoteError
from patch_build.loader.session import Session, in_target
from patch_build.loader.state import PENDING, PatchedFunc, PatchRecord

REL32 = 1 << 31
USER_TOP = 0x7FFF_FFFF_F000
MMAP_MIN = 0x10000


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


@dataclass
class Placement:
    """One mapping of the patch: the sections one target's new functions need, near that target."""

    target: str
    plan: layout.Plan
    candidates: list[int]
    base: int = 0


def max_header(info: ModuleInfo, path: str) -> int:
    """Bytes the record may take in the first mapping's header, whatever addresses it will hold."""
    big = 1 << 62
    hooks: dict[str, list[list]] = {}
    for h in info.hooks:
        hooks.setdefault(h.stage, []).append([h.function, big])
    record = PatchRecord(info.name, big, os.path.abspath(path), time.time(), [[big, big]] * len(info.targets),
                         [[big, big]] * len(info.targets), PENDING,
                         [{"name": t.name, "build_id": t.build_id} for t in info.targets],
                         [PatchedFunc(f.name, f.objname, big, big, big, big, big, big, "00" * 16, "x" * 256)
                          for f in info.funcs], [[big, big, big]] * len(info.targets), hooks=hooks)
    return len(record.encode()) + 256


def placements(s: Session, info: ModuleInfo, obj, path: str, olds, targets: dict[str, LoadedObject]):
    """One mapping plan per target, with the free addresses near it where it could go. The hooks go with the
    first target's new functions."""
    roots: dict[str, list[str]] = {}
    for func, _, _ in olds:
        roots.setdefault(func.objname, []).append(func.new_symbol)
    next(iter(roots.values())).extend(h.function for h in info.hooks)
    placements = []
    for i, (target, sections) in enumerate(layout.partition(obj, roots).items()):
        plan = layout.plan(obj, sections, max_header(info, path) if i == 0 else 0)
        anchors = [targets[target].start, targets[target].end]
        anchors += [a + d for f, a, n in olds if f.objname == target for d in (0, n)]
        candidates = free_addresses_near(s.maps, plan.size, anchors)
        if not candidates:
            raise Refused([(info.name, f"no free address range within ±2 GB of {target}")])
        placements.append(Placement(target, plan, candidates))
    return placements


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


def remove_mappings(s: Session, mappings: list[tuple[int, int]]) -> None:
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
