"""Read an x86-64 ELF relocatable object into the model (LIEF), guarding LIEF's known limits.

LIEF reads sections and symbols; relocation entries are unpacked from the raw SHT_RELA contents so each
one is tied to the exact section it applies to (names need not be unique). The ELF header is checked by
hand first, because LIEF quietly returns nothing for inputs it cannot handle: more than 65,280
sections (SHN_XINDEX numbering), truncated files, other machines.
"""
from __future__ import annotations

import os
import struct

from diffobj import arch
from diffobj.errors import InputError
from diffobj.model import (
    SHN_UNDEF,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    STT_FILE,
    STT_FUNC,
    STT_SECTION,
    ObjectFile,
    Relocation,
    Section,
    Symbol,
)

ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
SHN_LORESERVE = 0xFF00
MAX_SECTIONS = SHN_LORESERVE  # 65,280: from there on, ELF moves the count to section 0

_ET_NAMES = {ET_EXEC: "an executable", ET_DYN: "a shared object", ET_CORE: "a core dump"}
_ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_ELF64_SHDR = struct.Struct("<IIQQQQIIQQ")
_RELA = struct.Struct("<QQq")


def check_header(path: str, blob: bytes) -> list[tuple]:
    """Validate what LIEF would not; return the raw section headers (ELF64_Shdr fields)."""
    name = os.path.basename(path)
    if len(blob) < 4 or blob[:4] != b"\x7fELF":
        raise InputError(f"{name}: not an ELF file")
    if len(blob) < _ELF64_EHDR.size:
        raise InputError(f"{name}: truncated ELF header")
    ident, e_type, e_machine, _, _, _, e_shoff, _, _, _, _, e_shentsize, e_shnum, _ = _ELF64_EHDR.unpack_from(blob)
    if ident[4] != 2 or ident[5] != 1:
        raise InputError(f"{name}: not a 64-bit little-endian ELF file")
    if arch.for_machine(e_machine) is None:
        raise InputError(f"{name}: unsupported machine (e_machine {e_machine}); only x86-64 is supported")
    if e_type != ET_REL:
        what = _ET_NAMES.get(e_type, f"ELF type {e_type}")
        raise InputError(f"{name}: is {what}, not a relocatable object (.o)")
    if e_shoff == 0:
        raise InputError(f"{name}: has no section header table")
    if e_shnum == 0:
        # The real count lives in section 0's sh_size: LIEF returns no sections for such files.
        if len(blob) >= e_shoff + _ELF64_SHDR.size:
            count = _ELF64_SHDR.unpack_from(blob, e_shoff)[5]
            raise InputError(f"{name}: has {count} sections; objects with more than {MAX_SECTIONS:,} "
                             "sections are not supported (split the compilation unit)")
        raise InputError(f"{name}: truncated section header table")
    if e_shentsize != _ELF64_SHDR.size or e_shoff + e_shnum * e_shentsize > len(blob):
        raise InputError(f"{name}: truncated or corrupt section header table")
    headers = list(_ELF64_SHDR.iter_unpack(blob[e_shoff:e_shoff + e_shnum * e_shentsize]))
    for i, (_, sh_type, _, _, sh_offset, sh_size, *_rest) in enumerate(headers):
        if sh_type != SHT_NOBITS and sh_offset + sh_size > len(blob):
            raise InputError(f"{name}: truncated (section {i} runs past the end of the file)")
    return headers


def read_object(path: str, blob: bytes | None = None) -> ObjectFile:
    """Read the object at `path`, or its bytes `blob` when the caller has read (and checked) them."""
    if blob is None:
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
    headers = check_header(path, blob)

    import lief

    lief.logging.disable()
    binary = lief.ELF.parse(blob)
    if binary is None or len(binary.sections) != len(headers):
        raise InputError(f"{os.path.basename(path)}: could not be parsed as an ELF relocatable object")

    # Names come from LIEF; numeric fields and contents from the headers checked above: LIEF's
    # `content` costs time linear in the section count per call (quadratic over a large object) and
    # reads garbage for NOBITS sections, which must read as zeros.
    sections = []
    for i, (s, hdr) in enumerate(zip(list(binary.sections), headers)):
        _, stype, flags, _, offset, size, link, info, align, entsize = hdr
        data = bytes(size) if stype == SHT_NOBITS else blob[offset:offset + size]
        sections.append(Section(index=i, name=s.name, type=stype, flags=flags, addralign=align,
                                entsize=entsize, data=data, link=link, info=info))

    symbols = []
    source_file = ""
    for i, s in enumerate(list(binary.symtab_symbols)):
        stype, bind = int(s.type), int(s.binding)
        shndx = int(s.shndx)
        sym = Symbol(index=i, name=s.name, type=stype, bind=bind, other=int(s.other), shndx=shndx,
                     value=int(s.value), size=int(s.size))
        if shndx != SHN_UNDEF and shndx < SHN_LORESERVE:
            if shndx >= len(sections):
                raise InputError(f"{os.path.basename(path)}: symbol {s.name!r} has bad section index {shndx}")
            sym.section = sections[shndx]
            if stype == STT_SECTION:
                sym.section.section_symbol = sym
            else:
                sym.section.symbols.append(sym)
        if stype == STT_FILE and not source_file:
            source_file = s.name
        symbols.append(sym)

    for sec in sections:
        if sec.type == SHT_REL:
            raise InputError(f"{os.path.basename(path)}: SHT_REL section {sec.name}: only RELA is used on x86-64")
        if sec.type == SHT_RELA:
            if not 0 < sec.info < len(sections):
                raise InputError(f"{os.path.basename(path)}: relocation section {sec.name} has bad target")
            target = sections[sec.info]
            for r_offset, r_info, r_addend in _RELA.iter_unpack(sec.data[: len(sec.data) // 24 * 24]):
                symidx = r_info >> 32
                if symidx >= len(symbols):
                    raise InputError(f"{os.path.basename(path)}: relocation in {sec.name} names bad symbol {symidx}")
                target.relocations.append(Relocation(r_offset, r_info & 0xFFFFFFFF, symbols[symidx], r_addend))
        elif sec.type == SHT_GROUP:
            for idx in struct.unpack_from(f"<{len(sec.data) // 4}I", sec.data)[1:]:
                if 0 < idx < len(sections):
                    sections[idx].group = sec
    for sec in sections:
        sec.relocations.sort(key=lambda r: r.offset)
        _mark_aliases(sec)
    return ObjectFile(path=path, sections=sections, symbols=symbols, source_file=source_file)


def _mark_aliases(sec: Section) -> None:
    """Several function symbols with one address and size are one function (gcc adds `NAME.localalias`
    for -fPIC code): the global, or else the undotted, name is the function; the others alias it."""
    by_extent: dict[tuple[int, int], list[Symbol]] = {}
    for sym in sec.symbols:
        if sym.type == STT_FUNC:
            by_extent.setdefault((sym.value, sym.size), []).append(sym)
    for syms in by_extent.values():
        if len(syms) > 1:
            primary = min(syms, key=lambda s: (s.is_local, "." in s.name, s.index))
            for sym in syms:
                if sym is not primary:
                    sym.alias_of = primary
