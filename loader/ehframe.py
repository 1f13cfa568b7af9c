"""The unwind information one patch mapping registers in the target: the module's `.eh_frame` records
(CIEs and FDEs) of the functions that mapping holds, ending with the one zero terminator libgcc's
`__register_frame_info` walks to.

The module's `.eh_frame` may hold terminators inside (`ld -r` concatenating objects' sections) and, for a
module with several targets, FDEs of code that goes to other mappings; each mapping gets its own copy
with just its FDEs, their CIEs, the CIE pointers recomputed and the relocations moved along (elfcore.ehframe).
"""
from __future__ import annotations

import dataclasses

from patch_build.common.errors import InputError
from patch_build.elfcore.ehframe import EH_FRAME, MalformedEhFrame, keep_fdes, pc_begin, records, relocations_by_record
from patch_build.elfcore.model import ObjectFile, Section


class EhFrameError(InputError):
    """The module's .eh_frame is corrupt: exit 2."""


def unwind_section(obj: ObjectFile, code: set[int]) -> Section | None:
    """A copy of the module's `.eh_frame` holding the FDEs of the code sections `code` (indices), their
    CIEs and a terminator; None when the module describes none of that code."""
    sec = next((s for s in obj.sections if s.name == EH_FRAME and s.is_alloc), None)
    if sec is None or not sec.relocations:
        return None
    try:
        found = records(sec.data)
        by_record = relocations_by_record(found, sec.relocations)
    except MalformedEhFrame as e:
        raise EhFrameError(f"the module's {EH_FRAME} is malformed: {e}") from None
    fdes = set()
    for r in found:
        first = pc_begin(r, by_record[r.offset])
        if first is not None and first.symbol.section is not None and first.symbol.section.index in code:
            fdes.add(r.offset)
    if not fdes:
        return None
    data, relocations, _ = keep_fdes(sec.data, found, by_record, fdes)
    return dataclasses.replace(sec, data=data, relocations=relocations)
