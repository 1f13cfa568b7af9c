"""The records of an object's `.eh_frame` (CIEs and FDEs), and a copy of it that keeps some of its FDEs.

A record is a 32-bit length, then a 32-bit CIE id: 0 for a CIE, else the distance back to the FDE's CIE. A
zero length is a terminator: the linker puts one at the end of a program's frames, and `ld -r` joining
objects can leave several inside one section, so the walk steps over them to the section's end. In an
object, each FDE's first relocation (at offset 8, its pc_begin) names the code it describes; the rest point
at its LSDA or, in a CIE, at the personality routine. The call frame instructions of a linked binary's FDEs
are decoded by pyelftools (`fdes`, `decode_fde`), and into rows of rules for an unwinder (`frame_table`);
malformed ones are a MalformedEhFrame.
"""
from __future__ import annotations

import bisect
import dataclasses
import io
import struct
from typing import NamedTuple

from patch_build.elfcore.parsing import pyelftools_errors
from patch_build.elfcore.structs import U32

EH_FRAME = ".eh_frame"
TERMINATOR = bytes(4)
PC_BEGIN = 8  # offset of an FDE's pc_begin field in the record
_DWARF64 = 0xFFFFFFFF  # an extended length: 64-bit DWARF, which gcc does not produce for .eh_frame


class MalformedEhFrame(ValueError):
    """The records cannot be walked; the message says where."""


class Record(NamedTuple):
    offset: int
    size: int  # the length field included
    cie: int  # the offset of an FDE's CIE; -1 for a CIE

    @property
    def is_cie(self) -> bool:
        return self.cie < 0


def records(data: bytes) -> list[Record]:
    """The records of `data` in order, terminators stepped over; MalformedEhFrame when a length runs past the
    end or an FDE points at no CIE before it."""
    out, cies, off = [], set(), 0
    while off + 4 <= len(data):
        (length,) = U32.unpack_from(data, off)
        if length == 0:
            off += 4
            continue
        if length == _DWARF64 or length < 4 or off + 4 + length > len(data):
            raise MalformedEhFrame(f"bad record length at offset {off:#x}")
        (cie_id,) = U32.unpack_from(data, off + 4)
        cie = -1 if cie_id == 0 else off + 4 - cie_id
        if cie_id == 0:
            cies.add(off)
        elif cie not in cies:  # before the section's start too: never read as a CIE
            raise MalformedEhFrame(f"the FDE at offset {off:#x} points to no CIE")
        out.append(Record(off, 4 + length, cie))
        off += 4 + length
    return out


def relocations_by_record(found: list[Record], relocations: list) -> dict[int, list]:
    """Each record's relocations (anything with an `offset`), by record offset, in offset order;
    MalformedEhFrame when one lies outside every record."""
    starts = [r.offset for r in found]
    out: dict[int, list] = {r.offset: [] for r in found}
    for rel in sorted(relocations, key=lambda r: r.offset):
        i = bisect.bisect_right(starts, rel.offset) - 1
        if i < 0 or rel.offset >= starts[i] + found[i].size:
            raise MalformedEhFrame(f"a relocation at {rel.offset:#x} lies outside every record")
        out[starts[i]].append(rel)
    return out


def pc_begin(record: Record, relocations: list):
    """The relocation naming the code an FDE describes (its first, at pc_begin), or None."""
    first = relocations[0] if relocations else None
    return first if not record.is_cie and first is not None and first.offset == record.offset + PC_BEGIN else None


def keep_fdes(data: bytes, found: list[Record], by_record: dict[int, list], fdes: set[int]) \
        -> tuple[bytes, list, list[Record]]:
    """A copy of the section holding the FDEs at offsets `fdes` and their CIEs, in their order, each FDE's CIE
    pointer recomputed, ending with a terminator; with the relocations moved along (`dataclasses.replace`)
    and the records kept (at their old offsets)."""
    cies = {r.cie for r in found if r.offset in fdes}
    moved: dict[int, int] = {}
    out, relocations, kept = bytearray(), [], []
    for r in found:
        if r.offset not in (cies if r.is_cie else fdes):
            continue
        moved[r.offset] = len(out)
        record = bytearray(data[r.offset:r.offset + r.size])
        if not r.is_cie:
            U32.pack_into(record, 4, len(out) + 4 - moved[r.cie])
        out += record
        relocations += [dataclasses.replace(rel, offset=rel.offset - r.offset + moved[r.offset])
                        for rel in by_record[r.offset]]
        kept.append(r)
    return bytes(out + TERMINATOR), relocations, kept


def _cfi(data: bytes, address: int):
    from elftools.dwarf.callframe import CallFrameInfo
    from elftools.dwarf.structs import DWARFStructs

    structs = DWARFStructs(little_endian=True, dwarf_format=32, address_size=8)
    return CallFrameInfo(io.BytesIO(data), len(data), address, structs, for_eh_frame=True)


def fdes(data: bytes, address: int) -> list:
    """Every FDE of a linked `.eh_frame` loaded at `address`, decoded by pyelftools (each knows its `cie`);
    MalformedEhFrame when the section cannot be decoded."""
    from elftools.dwarf.callframe import FDE

    try:
        return [e for e in _cfi(data, address).get_entries() if isinstance(e, FDE)]
    except pyelftools_errors() as e:
        raise MalformedEhFrame(f"undecodable call frame information ({type(e).__name__}: {e})") from None


def decode_fde(data: bytes, address: int, offset: int):
    """The FDE at `offset` of a linked `.eh_frame` loaded at `address`, decoded by pyelftools; None when a
    CIE lies there. Only that FDE and its CIE are parsed (libc's whole section would take long): they are
    copied into a stream of their own, placed so that the FDE's PC-relative fields keep their addresses."""
    from elftools.dwarf.callframe import FDE

    (length,) = U32.unpack_from(data, offset)
    (cie_id,) = U32.unpack_from(data, offset + 4)
    if cie_id == 0:
        return None
    cie_offset = offset + 4 - cie_id
    (cie_length,) = U32.unpack_from(data, cie_offset)
    cie = data[cie_offset:cie_offset + 4 + cie_length]
    fde = bytearray(data[offset:offset + 4 + length])
    U32.pack_into(fde, 4, len(cie) + 4)  # its CIE now lies just before it
    entries = _cfi(cie + bytes(fde), address + offset - len(cie)).get_entries()
    return entries[1] if len(entries) == 2 and isinstance(entries[1], FDE) else None


# How a register's value in the caller is found (DWARF's register rules), by pyelftools' names (RegisterRule):
# the two an unwinder needs to tell apart from the rest.
UNDEFINED = "UNDEFINED"  # no value: the return address of the outermost frame
OFFSET = "OFFSET"  # saved at CFA + arg


class Rule(NamedTuple):
    kind: str  # UNDEFINED, OFFSET, or another of DWARF's rules (SAME_VALUE, REGISTER, EXPRESSION, ...)
    arg: object  # the offset of OFFSET; what the other kinds take


class FrameRow(NamedTuple):
    pc: int  # the row applies from this address on
    cfa: tuple[int, int] | None  # (register, offset) the CFA is; None when an expression computes it
    rules: dict[int, Rule]  # by DWARF register number; a register not listed has no rule


class FrameTable(NamedTuple):
    start: int  # the code the FDE covers: [start, end)
    end: int
    return_address: int  # the DWARF register that holds the return address (the CIE's)
    rows: list[FrameRow]


def frame_table(data: bytes, address: int, offset: int) -> FrameTable | None:
    """The rows of the FDE at `offset` of a linked `.eh_frame` loaded at `address` (`decode_fde`); None when
    a CIE lies there, MalformedEhFrame when it cannot be decoded."""
    try:
        fde = decode_fde(data, address, offset)
        if fde is None:
            return None
        decoded = fde.get_decoded()
        rows = [FrameRow(line["pc"], None if line["cfa"].expr is not None else (line["cfa"].reg, line["cfa"].offset),
                         {reg: Rule(rule.type, rule.arg) for reg, rule in line.items() if isinstance(reg, int)})
                for line in decoded.table]
        start = fde.header["initial_location"]
        return FrameTable(start, start + fde.header["address_range"], fde.cie["return_address_register"], rows)
    except pyelftools_errors() as e:
        raise MalformedEhFrame(f"undecodable FDE at offset {offset:#x} ({type(e).__name__}: {e})") from None


EH_FRAME_HDR = ".eh_frame_hdr"
# version 1, eh_frame_ptr pcrel|sdata4, fde_count udata4, table datarel|sdata4: what GNU ld writes
_GNU_LD_HDR = b"\x01\x1b\x03\x3b"


def search_table(address: int, data: bytes, eh_frame_address: int) -> list[tuple[int, int]] | None:
    """(initial location, offset of the FDE in `.eh_frame`) of each entry of the binary search table of an
    `.eh_frame_hdr` loaded at `address`, in address order; None when its encodings are not GNU ld's."""
    if data[:4] != _GNU_LD_HDR:
        return None
    (count,) = U32.unpack_from(data, 8)
    return [(address + start, address + fde - eh_frame_address)
            for start, fde in struct.iter_unpack("<ii", data[12:12 + 8 * count])]
