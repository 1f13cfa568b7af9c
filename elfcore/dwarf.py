"""DWARF, through pyelftools: of a relocatable object, with its debug relocations applied quickly
(`read_dwarf`), and the pieces of pyelftools' DWARF support its readers use (location expressions, base type
encodings). A linked file's DWARF is `elffile.ElfFile.dwarf`.

In a `.o` every reference from `.debug_info` into `.debug_str`, `.debug_line`, ... is a relocation, so
the DWARF is unreadable until they are applied. pyelftools applies them one pyelftools-parsed entry at a
time, which takes seconds on a kernel object; the debug sections only use absolute relocations against
section (or defined) symbols, so they are applied here as `S + A` on the raw image first.

A symbol in a code section is given the address `TEXT_BASE(section index) + value` there, so that with
`-ffunction-sections` (every function at offset 0 of its own section) each function still has addresses of
its own in the line table and DIEs: `text_address` gives the same for a symbol of the object.
"""
from __future__ import annotations

import contextlib
import io
import os
from functools import cache

from patch_build.common.errors import InputError
from patch_build.common.inputfile import read_input
from patch_build.elfcore.constants import SHF_COMPRESSED, SHF_EXECINSTR, SHN_LORESERVE, SHT_RELA, SHT_SYMTAB
from patch_build.elfcore.parsing import pyelftools_errors
from patch_build.elfcore.read import MAX_OBJECT_SIZE
from patch_build.elfcore.structs import EHDR, RELA, SYM, SectionHeader, r_sym, r_type
from patch_build.elfcore.x86_64 import R_X86_64_32, R_X86_64_32S, R_X86_64_64, reloc_type

# The absolute relocations debug sections use; any other makes the file go pyelftools' way.
_DEBUG_RELOCATIONS = {t: reloc_type(t) for t in (R_X86_64_64, R_X86_64_32, R_X86_64_32S)}


def text_address(shndx: int, value: int) -> int:
    """The address DWARF read by `read_dwarf` gives offset `value` of code section `shndx` of an object."""
    return (shndx << 40) + value


def _relocated_debug_image(path: str, blob: bytes) -> bytes | None:
    """The file with the relocations of its .debug_* sections applied, or None if it needs pyelftools' way;
    InputError when one lies outside its section or names no symbol (the differ never reads them)."""
    *_, e_shoff, _, _, _, _, _, e_shnum, e_shstrndx = EHDR.unpack_from(blob)
    headers = SectionHeader.table(blob, e_shoff, e_shnum)
    strtab = headers[e_shstrndx]

    def name(h: SectionHeader) -> bytes:
        start = strtab.offset + h.name_offset
        return blob[start:blob.index(b"\0", start)]

    symtab = next((h for h in headers if h.type == SHT_SYMTAB), None)
    if symtab is None:
        return None
    values = [text_address(s[3], s[4]) if s[3] < min(e_shnum, SHN_LORESERVE) and headers[s[3]].flags & SHF_EXECINSTR
              else s[4] for s in SYM.iter_unpack(blob[symtab.offset:symtab.offset + symtab.size])]
    image = bytearray(blob)
    for h in headers:
        if h.type != SHT_RELA or not 0 < h.info < e_shnum:
            continue
        target = headers[h.info]
        if not name(target).startswith(b".debug"):
            continue
        if target.flags & SHF_COMPRESSED:
            return None
        for r_offset, r_info, r_addend in RELA.iter_unpack(blob[h.offset:h.offset + h.size // RELA.size * RELA.size]):
            rtype = _DEBUG_RELOCATIONS.get(r_type(r_info))
            sym = r_sym(r_info)
            if rtype is None:
                return None
            if sym >= len(values) or r_offset + rtype.size > target.size:
                where = name(target).decode(errors="replace")
                what = f"names bad symbol {sym}" if sym >= len(values) else f"lies outside {where}"
                raise InputError(f"{os.path.basename(path)}: malformed debug information (relocation at "
                                 f"{r_offset:#x} in {name(h).decode(errors='replace')} {what})")
            value = rtype.value(S=values[sym], A=r_addend)
            if not rtype.signed:  # an unsigned field keeps the low bits (text addresses here exceed 32 bits)
                value &= (1 << (rtype.size * 8)) - 1
            at = target.offset + r_offset
            image[at:at + rtype.size] = rtype.encode(value)  # ValueError when a signed one does not fit
    return bytes(image)


@contextlib.contextmanager
def dwarf_errors(path: str):
    """Malformed debug info as one InputError naming the file. pyelftools parses lazily and fails deep in
    its parsers with many exception types (its own, and KeyError, IndexError, TypeError... on values it
    does not expect), so this wraps all the code that reads DWARF, not just the opening."""
    try:
        yield
    except pyelftools_errors() as e:
        detail = f"{type(e).__name__}: {e}"
        raise InputError(f"{os.path.basename(path)}: malformed debug information ({detail[:120]})") from None


def read_dwarf(path: str):
    """pyelftools' DWARFInfo of the object at `path`, or None when it has no DWARF (call it, and use what it
    returns, inside `dwarf_errors`)."""
    from elftools.elf.elffile import ELFFile

    blob = read_input(path, "ELF object", MAX_OBJECT_SIZE)
    elf = ELFFile(io.BytesIO(blob))
    if elf.get_section_by_name(".debug_info") is None or not elf.has_dwarf_info():
        return None
    image = _relocated_debug_image(path, blob) if elf.header.e_type == "ET_REL" else blob
    if image is None:
        return elf.get_dwarf_info()
    return ELFFile(io.BytesIO(image)).get_dwarf_info(relocate_dwarf_sections=False)


def expression_parser(cu):
    """pyelftools' parser of the DWARF expressions (DW_AT_location) of the compilation unit `cu`."""
    from elftools.dwarf.dwarf_expr import DWARFExprParser

    return DWARFExprParser(cu.structs)


@cache
def base_type_encodings() -> dict[int, str]:
    """DW_AT_encoding value of a base type -> its name (DW_ATE_signed, DW_ATE_float, ...)."""
    from elftools.dwarf.enums import ENUM_DW_ATE

    return {v: k for k, v in ENUM_DW_ATE.items()}
