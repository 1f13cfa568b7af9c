"""The ELF header and section header table of a relocatable object, checked before anything is read through
them: a file's own numbers say where everything else lies, and an untrusted file may lie. They read the file
as its bytes or as an open file (`FileBytes`), which reads only the parts they look at."""
from __future__ import annotations

import os

from patch_build.common.errors import InputError
from patch_build.common.inputfile import MIB, FileBytes
from patch_build.elfcore.constants import (
    EI_CLASS,
    EI_DATA,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    EM_X86_64,
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_REL,
    MAX_SECTIONS,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
)
from patch_build.elfcore.structs import EHDR, RELA, SHDR, SYM, SectionHeader, string_at

MAX_NOBITS_SIZE = 256 * MIB  # a NOBITS section is read as zeros: its size is memory the reader allocates
MAX_ALIGN = 2 * MIB  # the differ's output pads to each section's alignment; x86-64 uses at most huge-page alignment
ENTRY_SIZE = SYM.size  # of an ELF64 symbol and of a RELA entry
assert RELA.size == ENTRY_SIZE

_ET_NAMES = {ET_EXEC: "an executable", ET_DYN: "a shared object", ET_CORE: "a core dump"}


E_TYPE_END = 18  # e_type: the two bytes after e_ident, all that tells an object from a linked binary


def elf_type(head: bytes) -> int | None:
    """The e_type of a file whose first bytes (E_TYPE_END suffice) are `head`; None when it is not ELF."""
    if not head.startswith(ELFMAG) or len(head) < E_TYPE_END:
        return None
    return int.from_bytes(head[16:E_TYPE_END], "little")


def check_header(path: str, blob: bytes | FileBytes) -> list[SectionHeader]:
    """Check that `blob` is an x86-64 relocatable object whose section headers can be trusted: every section
    within the file (NOBITS ones within a bound), whole symbol and relocation entries, links to existing
    sections, string tables that end with a NUL, names inside the section name table. Return the section headers;
    InputError naming the file otherwise."""
    e_type, e_machine = _check_ident(path, blob)
    if e_machine != EM_X86_64:
        raise InputError(f"{os.path.basename(path)}: unsupported machine (e_machine {e_machine}); "
                         "only x86-64 is supported")
    if e_type != ET_REL:
        what = _ET_NAMES.get(e_type, f"ELF type {e_type}")
        raise InputError(f"{os.path.basename(path)}: is {what}, not a relocatable object (.o)")
    return _section_headers(path, blob, MAX_ALIGN)


def check_linked_header(path: str, blob: bytes | FileBytes) -> list[SectionHeader]:
    """`check_header` for an x86-64 executable or shared library: its section headers, checked as an object's
    (but for alignment: a linked file's sections are read, never laid out again)."""
    e_type, e_machine = _check_ident(path, blob)
    if e_type not in (ET_EXEC, ET_DYN) or e_machine != EM_X86_64:
        raise InputError(f"{os.path.basename(path)}: not an x86-64 executable or shared library")
    return _section_headers(path, blob, None)


def _check_ident(path: str, blob: bytes | FileBytes) -> tuple[int, int]:
    """(e_type, e_machine) of `blob`, once it is known to be a 64-bit little-endian ELF file."""
    name = os.path.basename(path)
    if blob[:len(ELFMAG)] != ELFMAG:
        raise InputError(f"{name}: not an ELF file")
    if len(blob) < EHDR.size:
        raise InputError(f"{name}: truncated ELF header")
    ident, e_type, e_machine, *_ = EHDR.unpack(blob[:EHDR.size])
    if ident[EI_CLASS] != ELFCLASS64 or ident[EI_DATA] != ELFDATA2LSB:
        raise InputError(f"{name}: not a 64-bit little-endian ELF file")
    return e_type, e_machine


def _section_headers(path: str, blob: bytes | FileBytes, max_align: int | None) -> list[SectionHeader]:
    name = os.path.basename(path)
    *_, e_shoff, _, _, _, _, e_shentsize, e_shnum, e_shstrndx = EHDR.unpack(blob[:EHDR.size])
    if e_shoff == 0:
        raise InputError(f"{name}: has no section header table")
    if e_shnum == 0:
        # The real count lives in section 0's sh_size (SHN_XINDEX numbering).
        if len(blob) >= e_shoff + SHDR.size:
            count = SectionHeader.table(blob, e_shoff, 1)[0].size
            raise InputError(f"{name}: has {count} sections; objects with more than {MAX_SECTIONS:,} "
                             "sections are not supported (split the compilation unit)")
        raise InputError(f"{name}: truncated section header table")
    if e_shentsize != SHDR.size or e_shoff + e_shnum * e_shentsize > len(blob):
        raise InputError(f"{name}: truncated or corrupt section header table")
    headers = SectionHeader.table(blob, e_shoff, e_shnum)
    for i, h in enumerate(headers):
        if h.type == SHT_NOBITS:
            if h.size > MAX_NOBITS_SIZE:
                raise InputError(f"{name}: section {i} is a NOBITS section of {h.size:,} bytes "
                                 f"(the limit is {MAX_NOBITS_SIZE:,})")
        elif h.offset + h.size > len(blob):
            raise InputError(f"{name}: truncated (section {i} runs past the end of the file)")
        if max_align is not None and (h.addralign & (h.addralign - 1) or h.addralign > max_align):
            raise InputError(f"{name}: section {i} has alignment {h.addralign:#x} "
                             f"(a power of two up to {max_align:#x} expected)")
        if h.type in (SHT_SYMTAB, SHT_RELA):
            if h.entsize != ENTRY_SIZE or h.size % ENTRY_SIZE:
                raise InputError(f"{name}: section {i} has entries of {h.entsize} bytes in {h.size} "
                                 f"(whole entries of {ENTRY_SIZE} expected)")
            if not 0 < h.link < e_shnum:
                raise InputError(f"{name}: section {i} links to section {h.link}, which does not exist")
        if h.type == SHT_SYMTAB and headers[h.link].type != SHT_STRTAB:
            raise InputError(f"{name}: symbol table (section {i}) links to section {h.link}, not a string table")
    if not 0 < e_shstrndx < e_shnum or headers[e_shstrndx].type != SHT_STRTAB:
        raise InputError(f"{name}: the section name table index {e_shstrndx} is not a string table")
    for i, h in enumerate(headers):
        if h.type == SHT_STRTAB and h.size and blob[h.offset + h.size - 1] != 0:
            raise InputError(f"{name}: string table (section {i}) does not end with a NUL byte")
        if h.name_offset >= headers[e_shstrndx].size:
            raise InputError(f"{name}: section {i}'s name lies outside the section name table")
    return headers


def section_names(path: str, blob: bytes | FileBytes, headers: list[SectionHeader]) -> list[str]:
    """The name of each section of a file `check_header` accepted; InputError when one is not UTF-8."""
    *_, e_shstrndx = EHDR.unpack(blob[:EHDR.size])
    names = headers[e_shstrndx]
    table = blob[names.offset:names.offset + names.size]
    return [text(path, string_at(table, h.name_offset), f"section {i}") for i, h in enumerate(headers)]


def text(path: str, raw: bytes, what: str) -> str:
    """A name read from the file, as text; InputError naming the file when it is not UTF-8."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InputError(f"{os.path.basename(path)}: the name of {what} is not valid UTF-8 ({raw[:40]!r})") from None
