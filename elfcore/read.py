"""Read an x86-64 ELF relocatable object into the model (`elfcore.model`), every field checked against the
file's bounds first (`elfcore.headers`): sections with their contents (NOBITS ones as zeros), symbols tied to
their sections, and relocation entries tied to the exact section they apply to (names need not be unique).
Unpacked with `struct`: a kernel object's hundred thousand relocations and symbols then cost milliseconds.
The file is read a part at a time (`common.inputfile.open_input`), and the contents and relocations of
sections that are not loaded (debug information: four fifths of a kernel unit's bytes, which the differ never
compares) are read (from the file opened again) and decoded and checked when first asked for, not before.
"""
from __future__ import annotations

import functools
import os

from patch_build.common.errors import InputError
from patch_build.common.inputfile import MIB, FileBytes, InputFile, open_input
from patch_build.elfcore import x86_64
from patch_build.elfcore.constants import (
    SHF_ALLOC,
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_GNU_UNIQUE,
    STB_LOCAL,
    STB_WEAK,
    STT_COMMON,
    STT_FILE,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
)
from patch_build.elfcore.headers import check_header, section_names, text
from patch_build.elfcore.model import ObjectFile, Relocation, Section, Symbol
from patch_build.elfcore.structs import RELA, SYM, U32, SectionHeader, r_sym, r_type, st_bind, st_type, string_at

MAX_OBJECT_SIZE = 1024 * MIB
_SYMBOL_TYPES = {STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS, STT_GNU_IFUNC}
_SYMBOL_BINDINGS = {STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE}


def read_object(path: str, blob: bytes | None = None, section_type: type[Section] = Section,
                symbol_type: type[Symbol] = Symbol) -> ObjectFile:
    """Read the object at `path`, or its bytes `blob` when the caller has read (and checked) them (all its
    contents are then taken from `blob`), into `section_type` and `symbol_type` (the differ's model extends
    elfcore's)."""
    if blob is not None:
        return _read(path, blob, None, section_type, symbol_type)
    with open_input(path, "ELF object", MAX_OBJECT_SIZE) as (parts, source):
        return _read(path, parts, source, section_type, symbol_type)


def _read(path: str, blob: bytes | FileBytes, source: InputFile | None, section_type: type[Section],
          symbol_type: type[Symbol]) -> ObjectFile:
    """The model of the object `blob` holds; the contents of sections not kept at once (`_read_now`) are read
    from `source` when asked for, when there is one."""
    headers = check_header(path, blob)
    name = os.path.basename(path)

    sections = []
    kept = _read_now(headers) if source is not None else range(len(headers))
    for i, (section_name, h) in enumerate(zip(section_names(path, blob, headers), headers)):
        data = bytes(h.size) if h.type == SHT_NOBITS else blob[h.offset:h.offset + h.size] if i in kept else b""
        sec = section_type(index=i, name=section_name, type=h.type, flags=h.flags, addralign=h.addralign,
                           entsize=h.entsize, data=data, link=h.link, info=h.info)
        if i not in kept and h.type != SHT_NOBITS:
            sec.defer_data(h.size, functools.partial(source.read_part, h.offset, h.size))
        sections.append(sec)

    symbols = []
    source_file = ""
    symtabs = [h for h in headers if h.type == SHT_SYMTAB]
    if len(symtabs) > 1:
        raise InputError(f"{name}: malformed symbol table")
    table = blob[symtabs[0].offset:symtabs[0].offset + symtabs[0].size] if symtabs else b""
    strtab = headers[symtabs[0].link] if symtabs else None
    symbol_names = blob[strtab.offset:strtab.offset + strtab.size] if strtab else b""
    for i, (st_name, info, other, shndx, value, size) in enumerate(SYM.iter_unpack(table)):
        stype, bind = st_type(info), st_bind(info)
        sym = symbol_type(index=i, name=_name(path, symbol_names, st_name, f"symbol {i}"), type=stype, bind=bind,
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

    relas: dict[int, list[Section]] = {}  # target section index -> its relocation sections
    for sec in sections:
        if sec.type == SHT_REL:
            raise InputError(f"{name}: SHT_REL section {sec.name}: only RELA is used on x86-64")
        if sec.type == SHT_RELA:
            if not 0 < sec.info < len(sections):
                raise InputError(f"{name}: relocation section {sec.name} has bad target")
            relas.setdefault(sec.info, []).append(sec)
        elif sec.type == SHT_GROUP:
            for (idx,) in list(U32.iter_unpack(sec.data[:len(sec.data) // 4 * 4]))[1:]:  # a flag word, then members
                if 0 < idx < len(sections):
                    sections[idx].group = sec
    for index, rela_sections in relas.items():
        target = sections[index]
        read = functools.partial(_relocations, name, rela_sections, target, symbols)
        if target.flags & SHF_ALLOC:
            target.relocations = read()
        else:
            target.defer_relocations(read)
    for sec in sections:
        mark_aliases(sec)
        mark_prefixes(sec)
    return ObjectFile(path=path, sections=sections, symbols=symbols, source_file=source_file)


def _read_now(headers: list[SectionHeader]) -> set[int]:
    """The sections whose contents are kept as read: loaded ones, their relocations and the groups (the
    differ compares them all; reading them again would cost a file open each)."""
    return {i for i, h in enumerate(headers)
            if h.flags & SHF_ALLOC or h.type == SHT_GROUP
            or h.type == SHT_RELA and 0 < h.info < len(headers) and headers[h.info].flags & SHF_ALLOC}


def _relocations(name: str, relas: list[Section], target: Section, symbols: list[Symbol]) -> list[Relocation]:
    """The entries of the relocation sections `relas` of `target`, checked, in offset order."""
    out = []
    for sec in relas:
        for r_offset, info, r_addend in RELA.iter_unpack(sec.data):
            symidx, rtype = r_sym(info), r_type(info)
            if not 0 < symidx < len(symbols) or symbols[symidx].type == STT_FILE:
                raise InputError(f"{name}: relocation at {r_offset:#x} in {sec.name} names bad symbol {symidx}")
            kind = x86_64.RELOC_TYPES.get(rtype)
            if kind is None:
                raise InputError(f"{name}: unsupported relocation type {rtype} in {sec.name}")
            if r_offset + kind.size > target.size:
                raise InputError(f"{name}: relocation at {r_offset:#x} in {sec.name} lies outside "
                                 f"{target.name} ({target.size} bytes)")
            out.append(Relocation(r_offset, rtype, symbols[symidx], r_addend))
    out.sort(key=lambda r: r.offset)
    return out


def _name(path: str, table: bytes, offset: int, what: str) -> str:
    """The name at `offset` of a string table, as text."""
    try:
        raw = string_at(table, offset)
    except ValueError:
        raise InputError(f"{os.path.basename(path)}: the name of {what} lies outside its string table") from None
    return text(path, raw, what)


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


PADDING_PREFIXES = ("__pfx_", "__cfi_")  # kernel symbols naming the padding before a function (mark_prefixes)


def mark_prefixes(sec: Section) -> None:
    """The kernel's CALL_PADDING (6.2+) puts NOPs before each function, and objtool names them `__pfx_NAME`
    (`__cfi_NAME` with clang's CFI): a symbol of its own in NAME's section, ending where NAME starts."""
    starts = {(s.name, s.value): s for s in sec.symbols if s.type == STT_FUNC}
    for sym in sec.symbols:
        prefix = next((p for p in PADDING_PREFIXES if sym.name.startswith(p)), None)
        if sym.type == STT_FUNC and prefix is not None:
            owner = starts.get((sym.name[len(prefix):], sym.value + sym.size))
            if owner is not None:
                sym.prefix_of = owner
