"""The symbol tables of a linked binary (`.symtab`, `.dynsym`), unpacked with `struct` once pyelftools has
located them: libc's thousands of symbols then cost milliseconds; and the GOT slots the dynamic linker binds."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from patch_build.common.errors import InputError
from patch_build.elfcore.constants import VERSYM_HIDDEN
from patch_build.elfcore.parsing import pyelftools_errors
from patch_build.elfcore.structs import SYM, st_bind, st_type
from patch_build.elfcore.x86_64 import R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT

if TYPE_CHECKING:  # pyelftools is imported by the first file opened (`patch-ctl list` opens none)
    from elftools.elf.elffile import ELFFile


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    value: int  # link-time address (add the object's load base)
    size: int
    type: int
    bind: int
    shndx: int


def symbol_table(elf: ELFFile, table: str) -> list[ElfSymbol]:
    """The symbols of `table` (".symtab" or ".dynsym") in table order, [] when there is none. Of `.dynsym`,
    the symbols of a non-default version (memcpy@GLIBC_2.2.5) are left out: never what an unversioned name
    binds to."""
    sec = elf.get_section_by_name(table)
    if sec is None:
        return []
    strtab = elf.get_section(sec["sh_link"]).data()
    hidden = []
    if table == ".dynsym":
        versym = elf.get_section_by_name(".gnu.version")
        if versym is not None:
            raw = versym.data()
            hidden = [v & VERSYM_HIDDEN for v in struct.unpack(f"<{len(raw) // 2}H", raw)]
    return unpack_symbols(sec.data(), strtab, hidden)


def unpack_symbols(table: bytes, strtab: bytes, hidden: list[int] = ()) -> list[ElfSymbol]:
    """The symbols of a symbol table's contents `table`, named from the string table's contents `strtab`, in
    table order; the indices true in `hidden` are left out."""
    out = []
    for i, (st_name, info, _other, shndx, value, size) in enumerate(SYM.iter_unpack(table[:len(table) // SYM.size
                                                                                             * SYM.size])):
        if i < len(hidden) and hidden[i]:
            continue
        end = strtab.find(b"\0", st_name)
        out.append(ElfSymbol(strtab[st_name:end if end >= 0 else None].decode("utf-8", "replace"), value, size,
                             st_type(info), st_bind(info), shndx))
    return out


def symbols_of(path: str | os.PathLike, table: str = ".symtab") -> list[ElfSymbol] | None:
    """The symbols of `table` of the ELF file at `path`; None when it has no such table, InputError when the
    file cannot be read as ELF."""
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            return symbol_table(elf, table) if elf.get_section_by_name(table) is not None else None
    except (OSError, *pyelftools_errors()) as e:
        raise InputError(f"{path}: cannot read its symbols ({e})") from None


def got_slots(elf: ELFFile) -> dict[str, int]:
    """Symbol name -> link-time address of the GOT slot the dynamic linker fills with its address
    (R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT against `.dynsym`), the first slot of each name."""
    from elftools.elf.relocation import RelocationSection

    out: dict[str, int] = {}
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection) or sec["sh_type"] != "SHT_RELA" or not sec["sh_link"]:
            continue
        symbols = elf.get_section(sec["sh_link"])
        if symbols.name != ".dynsym":
            continue
        for rel in sec.iter_relocations():
            if rel["r_info_type"] in (R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT) and rel["r_info_sym"]:
                out.setdefault(symbols.get_symbol(rel["r_info_sym"]).name, rel["r_offset"])
    return out
