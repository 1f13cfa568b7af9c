"""Read an x86-64 ELF relocatable object into the model.

The fixed-size ELF64 records (header, section headers, symbols, RELA entries) are unpacked with `struct`
from the bytes read once, each field checked before it is used: more than 65,280 sections (SHN_XINDEX
numbering), truncated files and other machines are refused by name. LIEF is not used here: importing it
costs more than reading a large object (issue 11), and a relocatable object needs nothing it adds.
Relocation entries are tied to the exact section they apply to (names need not be unique).
"""
from __future__ import annotations

import operator
import os
import struct

from diffobj import arch
from diffobj.errors import InputError
from diffobj.inputfile import MIB, read_input
from diffobj.model import (
    ELF64_EHDR,
    ELF64_RELA,
    ELF64_SHDR,
    ELF64_SYM,
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
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
MAX_OBJECT_SIZE = 1024 * MIB
MAX_NOBITS_SIZE = 256 * MIB  # a NOBITS section is read as zeros: its size is memory the differ allocates
MAX_ALIGN = 2 * MIB  # the output pads to each section's alignment; x86-64 uses at most huge-page alignment

_ET_NAMES = {ET_EXEC: "an executable", ET_DYN: "a shared object", ET_CORE: "a core dump"}
_ENTRY_SIZE = 24  # of an ELF64 symbol and of a RELA entry
_SYMBOL_TYPES = {0, 1, 2, 3, 4, 5, 6, 10}  # NOTYPE..TLS, GNU_IFUNC
_SYMBOL_BINDINGS = {0, 1, 2, 10}  # LOCAL, GLOBAL, WEAK, GNU_UNIQUE


def check_header(path: str, blob: bytes) -> list[tuple]:
    """Validate what LIEF would not; return the raw section headers (ELF64_Shdr fields)."""
    name = os.path.basename(path)
    if len(blob) < 4 or blob[:4] != b"\x7fELF":
        raise InputError(f"{name}: not an ELF file")
    if len(blob) < ELF64_EHDR.size:
        raise InputError(f"{name}: truncated ELF header")
    ident, e_type, e_machine, *_, e_shoff, _, _, _, _, e_shentsize, e_shnum, e_shstrndx = \
        ELF64_EHDR.unpack_from(blob)
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
        if len(blob) >= e_shoff + ELF64_SHDR.size:
            count = ELF64_SHDR.unpack_from(blob, e_shoff)[5]
            raise InputError(f"{name}: has {count} sections; objects with more than {MAX_SECTIONS:,} "
                             "sections are not supported (split the compilation unit)")
        raise InputError(f"{name}: truncated section header table")
    if e_shentsize != ELF64_SHDR.size or e_shoff + e_shnum * e_shentsize > len(blob):
        raise InputError(f"{name}: truncated or corrupt section header table")
    headers = list(ELF64_SHDR.iter_unpack(blob[e_shoff:e_shoff + e_shnum * e_shentsize]))
    for i, (_, sh_type, _, _, sh_offset, sh_size, sh_link, _, sh_addralign, sh_entsize) in enumerate(headers):
        if sh_type == SHT_NOBITS:
            if sh_size > MAX_NOBITS_SIZE:
                raise InputError(f"{name}: section {i} is a NOBITS section of {sh_size:,} bytes "
                                 f"(the limit is {MAX_NOBITS_SIZE:,})")
        elif sh_offset + sh_size > len(blob):
            raise InputError(f"{name}: truncated (section {i} runs past the end of the file)")
        if sh_addralign & (sh_addralign - 1) or sh_addralign > MAX_ALIGN:
            raise InputError(f"{name}: section {i} has alignment {sh_addralign:#x} "
                             f"(a power of two up to {MAX_ALIGN:#x} expected)")
        if sh_type in (SHT_SYMTAB, SHT_RELA):
            if sh_entsize != _ENTRY_SIZE or sh_size % _ENTRY_SIZE:
                raise InputError(f"{name}: section {i} has entries of {sh_entsize} bytes in {sh_size} "
                                 f"(whole entries of {_ENTRY_SIZE} expected)")
            if not 0 < sh_link < e_shnum:
                raise InputError(f"{name}: section {i} links to section {sh_link}, which does not exist")
        if sh_type == SHT_SYMTAB and headers[sh_link][1] != SHT_STRTAB:
            raise InputError(f"{name}: symbol table (section {i}) links to section {sh_link}, not a string table")
    if not 0 < e_shstrndx < e_shnum or headers[e_shstrndx][1] != SHT_STRTAB:
        raise InputError(f"{name}: the section name table index {e_shstrndx} is not a string table")
    for i, h in enumerate(headers):
        if h[1] == SHT_STRTAB and h[5] and blob[h[4] + h[5] - 1] != 0:
            raise InputError(f"{name}: string table (section {i}) does not end with a NUL byte")
        if h[0] >= headers[e_shstrndx][5]:
            raise InputError(f"{name}: section {i}'s name lies outside the section name table")
    return headers


def read_object(path: str, blob: bytes | None = None) -> ObjectFile:
    """Read the object at `path`, or its bytes `blob` when the caller has read (and checked) them."""
    if blob is None:
        blob = read_input(path, "ELF object", MAX_OBJECT_SIZE)
    headers = check_header(path, blob)
    name = os.path.basename(path)
    ehdr = ELF64_EHDR.unpack_from(blob)
    machine, shstrtab = arch.for_machine(ehdr[2]), headers[ehdr[13]]
    sections = []
    for i, (sh_name, stype, flags, _, offset, size, link, info, align, entsize) in enumerate(headers):
        data = bytes(size) if stype == SHT_NOBITS else blob[offset:offset + size]
        sections.append(Section(index=i, name=_string(name, blob, shstrtab, sh_name, f"section {i}"), type=stype,
                                flags=flags, addralign=align, entsize=entsize, data=data, link=link, info=info))

    symbols = []
    source_file = ""
    symtabs = [h for h in headers if h[1] == SHT_SYMTAB]
    if len(symtabs) > 1:
        raise InputError(f"{name}: malformed symbol table (more than one)")
    raw_symbols = ELF64_SYM.iter_unpack(blob[symtabs[0][4]:symtabs[0][4] + symtabs[0][5]]) if symtabs else ()
    strtab = headers[symtabs[0][6]] if symtabs else None
    for i, (st_name, st_info, other, shndx, value, size) in enumerate(raw_symbols):
        stype, bind = st_info & 0xF, st_info >> 4
        sym = Symbol(index=i, name=_string(name, blob, strtab, st_name, f"symbol {i}"), type=stype, bind=bind,
                     other=other, shndx=shndx, value=value, size=size)
        if shndx >= SHN_LORESERVE and shndx not in (SHN_ABS, SHN_COMMON):
            raise InputError(f"{name}: symbol {sym.name!r} has unsupported section index {shndx:#x}")
        if stype not in _SYMBOL_TYPES or bind not in _SYMBOL_BINDINGS:
            raise InputError(f"{name}: symbol {sym.name!r} has unsupported type {stype} or binding {bind}")
        if stype in (STT_FUNC, STT_SECTION) and shndx >= SHN_LORESERVE:
            raise InputError(f"{name}: symbol {sym.name!r} is a function or section outside any section")
        if shndx != SHN_UNDEF and shndx < SHN_LORESERVE:
            if shndx >= len(sections):
                raise InputError(f"{name}: symbol {sym.name!r} has bad section index {shndx}")
            sym.section = sections[shndx]
            if sym.value + sym.size > sym.section.size:
                raise InputError(f"{name}: symbol {sym.name!r} ({sym.value:#x}, {sym.size} bytes) lies outside "
                                 f"its section {sym.section.name} ({sym.section.size} bytes)")
            if stype == STT_SECTION:
                sym.section.section_symbol = sym
            else:
                sym.section.symbols.append(sym)
        if stype == STT_FILE and not source_file:
            source_file = sym.name
        symbols.append(sym)

    for sec in sections:
        if sec.type == SHT_REL:
            raise InputError(f"{name}: SHT_REL section {sec.name}: only RELA is used on x86-64")
        if sec.type == SHT_RELA:
            if not 0 < sec.info < len(sections):
                raise InputError(f"{name}: relocation section {sec.name} has bad target")
            target = sections[sec.info]
            target_size, out = target.size, target.relocations  # once per section: ~50,000 entries in a large unit
            for r_offset, r_info, r_addend in ELF64_RELA.iter_unpack(sec.data):
                symidx, rtype = r_info >> 32, r_info & 0xFFFFFFFF
                if not 0 < symidx < len(symbols) or symbols[symidx].type == STT_FILE:
                    raise InputError(f"{name}: relocation at {r_offset:#x} in {sec.name} names bad symbol {symidx}")
                kind = machine.RELOC_TYPES.get(rtype)
                if kind is None:
                    raise InputError(f"{name}: unsupported relocation type {rtype} in {sec.name}")
                if r_offset + kind.size > target_size:
                    raise InputError(f"{name}: relocation at {r_offset:#x} in {sec.name} lies outside "
                                     f"{target.name} ({target_size} bytes)")
                out.append(Relocation(r_offset, rtype, symbols[symidx], r_addend))
        elif sec.type == SHT_GROUP:
            for idx in struct.unpack_from(f"<{len(sec.data) // 4}I", sec.data)[1:]:
                if 0 < idx < len(sections):
                    sections[idx].group = sec
    for sec in sections:
        sec.relocations.sort(key=_offset)
        mark_aliases(sec)
    return ObjectFile(path=path, sections=sections, symbols=symbols, source_file=source_file)


_offset = operator.attrgetter("offset")


def _string(file: str, blob: bytes, table: tuple, offset: int, what: str) -> str:
    """The name at `offset` in the string table with section header `table` (checked by `check_header`
    to end with a NUL byte, so the search stops inside it)."""
    if offset >= table[5]:
        raise InputError(f"{file}: the name of {what} lies outside its string table")
    start = table[4] + offset
    raw = blob[start:blob.index(b"\0", start)]
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InputError(f"{file}: the name of {what} is not valid UTF-8 ({raw[:40]!r})") from None


def mark_aliases(sec: Section) -> None:
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
