"""The plain data model the differ's passes work on: elfcore's model of a relocatable object, with what the
passes set on its sections and symbols.

`read` fills it from an ELF relocatable object; `correlate` links each patched symbol and section to its
twin in the original; `compare` sets a status; `include` marks what the patch needs and how every
reference is resolved; `output` turns the marked model into an `OutputObject` that `writer` serialises.
Objects compare by identity: two sections with the same bytes are still two sections.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from patch_build.elfcore import model as elf
from patch_build.elfcore.constants import (  # noqa: F401  the passes' names for the gABI's numbers
    BOOKKEEPING_TYPES,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_GROUP,
    SHF_INFO_LINK,
    SHF_MERGE,
    SHF_STRINGS,
    SHF_TLS,
    SHF_WRITE,
    SHN_ABS,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LOCAL,
    STT_COMMON,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
)
from patch_build.elfcore.model import ObjectFile, Relocation  # noqa: F401  the passes use them as read


class Status(str, enum.Enum):
    SAME = "same"
    CHANGED = "changed"
    NEW = "new"


@dataclass(eq=False, repr=False)  # the ELF model's repr: a section is its index and name
class Section(elf.Section):
    # set by passes
    twin: Section | None = None
    status: Status | None = None
    included: bool = False


@dataclass(eq=False, repr=False, slots=True)
class Symbol(elf.Symbol):
    # set by passes
    twin: Symbol | None = None
    status: Status | None = None
    parent: Symbol | None = None  # a .cold/.part piece's parent function
    # Tuples until set (not lists made for every symbol, as most have neither: a kernel unit's thousands)
    children: tuple[Symbol, ...] = ()  # its .cold/.part pieces
    reasons: Sequence[str] = ()  # why CHANGED (compare)


# ---- the output: what the writer serialises -----------------------------------------------------

@dataclass(eq=False)
class OutSymbol:
    name: str
    type: int
    bind: int
    other: int = 0
    section: OutSection | None = None  # None: undefined (or absolute with shndx set)
    value: int = 0
    size: int = 0
    shndx: int | None = None  # explicit special index (SHN_ABS, SHN_LIVEPATCH...) when section is None


@dataclass(eq=False)
class OutRelocation:
    offset: int
    type: int
    symbol: OutSymbol
    addend: int


@dataclass(eq=False)
class OutSection:
    name: str
    type: int
    flags: int
    addralign: int
    entsize: int
    data: bytes
    relocations: list[OutRelocation] = field(default_factory=list)
    section_symbol: OutSymbol | None = None


@dataclass(eq=False)
class OutputObject:
    sections: list[OutSection]
    symbols: list[OutSymbol]  # any order: the writer puts locals first
    source_file: str = ""
