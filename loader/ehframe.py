"""The unwind information one patch mapping registers in the target: the module's `.eh_frame` records
(CIEs and FDEs) of the functions that mapping holds, ending with the one zero terminator libgcc's
`__register_frame_info` walks to.

The module's `.eh_frame` may hold terminators inside (`ld -r` concatenating objects' sections) and, for a
module with several targets, FDEs of code that goes to other mappings; each mapping gets its own copy
with just its FDEs, their CIEs, the CIE pointers recomputed and the relocations moved along.
"""
from __future__ import annotations

import bisect
import dataclasses
import struct

from common.errors import InputError
from elfcore.model import ObjectFile, Relocation, Section

EH_FRAME = ".eh_frame"
TERMINATOR = bytes(4)
_U32 = struct.Struct("<I")


class EhFrameError(InputError):
    """The module's .eh_frame is corrupt: exit 2."""


def records(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, size, CIE offset or -1 for a CIE) of each record, zero terminators skipped."""
    out, off = [], 0
    while off + 4 <= len(data):
        (length,) = _U32.unpack_from(data, off)
        if length == 0:
            off += 4
            continue
        if length == 0xFFFFFFFF or off + 4 + length > len(data) or length < 4:
            raise EhFrameError(f"the module's {EH_FRAME} is malformed: bad record length at offset {off:#x}")
        (cie_id,) = _U32.unpack_from(data, off + 4)
        cie = -1 if cie_id == 0 else off + 4 - cie_id
        if cie >= 0 and cie not in {o for o, _, c in out if c < 0}:
            raise EhFrameError(f"the module's {EH_FRAME} is malformed: the FDE at offset {off:#x} points to no CIE")
        out.append((off, 4 + length, cie))
        off += 4 + length
    return out


def unwind_section(obj: ObjectFile, code: set[int]) -> Section | None:
    """A copy of the module's `.eh_frame` holding the FDEs of the code sections `code` (indices), their
    CIEs and a terminator; None when the module describes none of that code."""
    sec = next((s for s in obj.sections if s.name == EH_FRAME and s.is_alloc), None)
    if sec is None or not sec.relocations:
        return None
    found = records(sec.data)
    starts = [off for off, _, _ in found]
    rels: dict[int, list[Relocation]] = {off: [] for off in starts}
    for rel in sorted(sec.relocations, key=lambda r: r.offset):
        i = bisect.bisect_right(starts, rel.offset) - 1
        if i < 0 or rel.offset >= starts[i] + found[i][1]:
            raise EhFrameError(f"the module's {EH_FRAME} is malformed: a relocation at {rel.offset:#x} lies outside "
                               "every record")
        rels[starts[i]].append(rel)

    def describes_code(off: int) -> bool:  # an FDE's pc_begin (offset 8) names the function it covers
        first = rels[off][0] if rels[off] else None
        return first is not None and first.offset == off + 8 and first.symbol.section is not None \
            and first.symbol.section.index in code

    fdes = [(off, size, cie) for off, size, cie in found if cie >= 0 and describes_code(off)]
    if not fdes:
        return None
    cies = {cie for _, _, cie in fdes}
    moved: dict[int, int] = {}
    data, relocations = bytearray(), []
    for off, size, cie in found:
        if off not in cies and (cie < 0 or not describes_code(off)):
            continue
        moved[off] = len(data)
        record = bytearray(sec.data[off:off + size])
        if cie >= 0:
            _U32.pack_into(record, 4, len(data) + 4 - moved[cie])
        data += record
        relocations += [dataclasses.replace(r, offset=r.offset - off + moved[off]) for r in rels[off]]
    return dataclasses.replace(sec, data=bytes(data + TERMINATOR), relocations=relocations)
