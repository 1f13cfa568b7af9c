"""The ELF64 little-endian records, as `struct` layouts (x86-64 is the only architecture): where pyelftools'
per-field parsing would cost too much (a kernel object's hundred thousand relocations, libc's symbols) or
where a file is rewritten in place. A section header is read and written as a `SectionHeader`, its fields by
name."""
from __future__ import annotations

import struct
from typing import NamedTuple

from patch_build.common.inputfile import FileBytes

# e_ident e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum
# e_shentsize e_shnum e_shstrndx
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info sh_addralign sh_entsize
SHDR = struct.Struct("<IIQQQQIIQQ")
# st_name st_info st_other st_shndx st_value st_size
SYM = struct.Struct("<IBBHQQ")
# r_offset r_info r_addend
RELA = struct.Struct("<QQq")
U32 = struct.Struct("<I")


class SectionHeader(NamedTuple):
    """An Elf64_Shdr: SHDR's fields, in its order."""
    name_offset: int  # sh_name: where the name starts in the section name table
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @classmethod
    def table(cls, blob: bytes | bytearray | FileBytes, offset: int, count: int) -> list[SectionHeader]:
        """The `count` headers of the section header table at `offset` of `blob`, which holds them whole."""
        return [cls._make(fields) for fields in SHDR.iter_unpack(blob[offset:offset + count * SHDR.size])]

    def pack(self) -> bytes:
        return SHDR.pack(*self)


def st_info(bind: int, type: int) -> int:
    return (bind << 4) | (type & 0xF)


def st_type(info: int) -> int:
    return info & 0xF


def st_bind(info: int) -> int:
    return info >> 4


def r_sym(info: int) -> int:
    return info >> 32


def r_type(info: int) -> int:
    return info & 0xFFFFFFFF


def string_at(table: bytes, offset: int) -> bytes:
    """The NUL-terminated string at `offset` of a string table's contents; ValueError when it lies outside."""
    end = table.find(b"\0", offset)
    if not 0 <= offset < len(table) or end < 0:
        raise ValueError(f"string offset {offset:#x} lies outside its table ({len(table)} bytes)")
    return table[offset:end]
