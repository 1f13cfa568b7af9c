"""Unwind information: keep the `.eh_frame` records of included functions (user space).

Without them a C++ exception, a backtrace or a thread cancellation that passes through the new code
finds no frame description and the process terminates. Each kept FDE brings its CIE, its LSDA
(`.gcc_except_table.*`, the catch tables) and the CIE's personality pointer; the records are rebased and
each FDE's CIE pointer recomputed. The loader registers the frames in the target.
"""
from __future__ import annotations

from patch_build.diffobj.include import Included, Inclusion
from patch_build.diffobj.model import ObjectFile, Relocation, Section
from patch_build.elfcore.ehframe import EH_FRAME, MalformedEhFrame, keep_fdes, pc_begin, records, relocations_by_record


def keep_unwind_info(patched: ObjectFile, inclusion: Inclusion) -> None:
    for sec in patched.sections:
        if sec.name == EH_FRAME and sec.relocations:
            _filter(sec, inclusion)


def _filter(sec: Section, inclusion: Inclusion) -> None:
    try:
        found = records(sec.data)
        by_record = relocations_by_record(found, sec.relocations)
    except MalformedEhFrame:
        inclusion.problems.warn(f"{sec.name}: unparseable, unwind information for the new code is left out")
        return
    fdes = set()
    for r in found:
        first = pc_begin(r, by_record[r.offset])
        if first is not None and first.symbol.section is not None and first.symbol.section.included:
            fdes.add(r.offset)
    if not fdes:
        return
    data, relocations, kept = keep_fdes(sec.data, found, by_record, fdes)
    for r in kept:
        for rel in by_record[r.offset][0 if r.is_cie else 1:]:  # an FDE's first is its code, included already
            _include_target(rel, sec, inclusion)
    sec.data, sec.relocations, sec.included = data, relocations, True
    inclusion.included.append(Included(sec.name, "section", f"unwind information of {len(fdes)} included function(s)"))
    inclusion.follow()


def _include_target(rel: Relocation, sec: Section, inclusion: Inclusion) -> None:
    """What an FDE (its LSDA) or a CIE (its personality pointer) needs besides the code."""
    target = rel.symbol.section
    if target is None:  # undefined or absolute: the running program must have it by name
        inclusion.require_available(inclusion.resolver.resolve(sec, rel), sec.name)
        return
    if target.included:
        return
    if target.name.startswith(".gcc_except_table"):
        inclusion.add(target, target.name, "section", "exception table of an included function")
    elif rel.symbol.name.startswith("DW.ref."):
        # A pointer to the personality routine, written once by the linker: copying it avoids
        # looking up a hidden symbol of the target.
        inclusion.add(target, rel.symbol.name, "object", "personality routine pointer for unwinding")
    else:
        inclusion.require_available(inclusion.resolver.resolve(sec, rel), sec.name)
