"""Unwind information: keep the `.eh_frame` records of included functions (user space).

Without them a C++ exception, a backtrace or a thread cancellation that passes through the new code
finds no frame description and the process terminates. Each kept FDE brings its CIE, its LSDA
(`.gcc_except_table.*`, the catch tables) and the CIE's personality pointer; the records are rebased and
each FDE's CIE pointer recomputed. The loader registers the frames in the target.
"""
from __future__ import annotations

import bisect
import struct

from diffobj.include import Included, Inclusion
from diffobj.model import ObjectFile, Relocation, Section

_U32 = struct.Struct("<I")


def _records(sec: Section) -> list[tuple[int, int, int]] | None:
    """(offset, size, cie_offset or -1 for a CIE) of each record; None when the section is not parseable."""
    out, off, data, cies = [], 0, sec.data, set()
    while off + 4 <= len(data):
        (length,) = _U32.unpack_from(data, off)
        if length == 0:
            break  # terminator
        if length == 0xFFFFFFFF or length < 4 or off + 4 + length > len(data):
            return None  # 64-bit DWARF lengths are not produced by gcc for x86-64
        (cie_id,) = _U32.unpack_from(data, off + 4)
        cie = -1 if cie_id == 0 else off + 4 - cie_id
        if cie == -1:
            cies.add(off)
        elif cie not in cies:
            return None  # an FDE must point back at a CIE
        out.append((off, 4 + length, cie))
        off += 4 + length
    return out or None


def keep_unwind_info(patched: ObjectFile, inclusion: Inclusion) -> None:
    for sec in patched.sections:
        if sec.name == ".eh_frame" and sec.relocations:
            _filter(sec, inclusion)


def _filter(sec: Section, inclusion: Inclusion) -> None:
    records = _records(sec)
    starts = [off for off, _, _ in records or ()]
    rels_in: dict[int, list[Relocation]] = {off: [] for off in starts}
    for rel in sec.relocations:
        # Relocations lie inside exactly one record: the nearest start at or before.
        i = bisect.bisect_right(starts, rel.offset) - 1
        if i < 0 or rel.offset >= starts[i] + records[i][1]:
            records = None
            break
        rels_in[starts[i]].append(rel)
    if records is None:
        inclusion.problems.warn(f"{sec.name}: unparseable, unwind information for the new code is left out")
        return

    def covers_included_code(off: int) -> bool:
        # An FDE's first relocation is its pc_begin: the function it describes.
        rels = rels_in[off]
        return bool(rels) and rels[0].offset == off + 8 and rels[0].symbol.section is not None \
            and rels[0].symbol.section.included

    kept_fdes = [(off, size, cie) for off, size, cie in records if cie >= 0 and covers_included_code(off)]
    if not kept_fdes:
        return
    needed_cies = {cie for _, _, cie in kept_fdes}
    new_offset: dict[int, int] = {}
    data = bytearray()
    relocations: list[Relocation] = []
    for off, size, cie in records:
        if (cie < 0 and off in needed_cies) or (cie >= 0 and covers_included_code(off)):
            new_offset[off] = len(data)
            record = bytearray(sec.data[off:off + size])
            if cie >= 0:
                _U32.pack_into(record, 4, len(data) + 4 - new_offset[cie])
            data += record
            relocations += [Relocation(r.offset - off + new_offset[off], r.type, r.symbol, r.addend)
                            for r in rels_in[off]]
            for r in rels_in[off][1 if cie >= 0 else 0:]:
                _include_target(r, sec, inclusion)
    data += bytes(4)  # terminator
    sec.data, sec.relocations, sec.included = bytes(data), relocations, True
    inclusion.included.append(Included(sec.name, "section",
                                       f"unwind information of {len(kept_fdes)} included function(s)"))
    inclusion.follow()


def _include_target(rel: Relocation, sec: Section, inclusion: Inclusion) -> None:
    """What an FDE (its LSDA) or a CIE (its personality pointer) needs besides the code."""
    target = rel.symbol.section
    if target is None or target.included:
        return
    if target.name.startswith(".gcc_except_table"):
        inclusion.add(target, target.name, "section", "exception table of an included function")
    elif rel.symbol.name.startswith("DW.ref."):
        # A pointer to the personality routine, written once by the linker: copying it avoids
        # looking up a hidden symbol of the target.
        inclusion.add(target, rel.symbol.name, "object", "personality routine pointer for unwinding")
    else:
        inclusion.require_available(inclusion.resolver.resolve(sec, rel), sec.name)
