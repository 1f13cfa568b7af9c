"""The plain data model the differ's passes work on.

`read` fills it from an ELF relocatable object; `correlate` links each patched symbol and section to its
twin in the original; `compare` sets a status; `include` marks what the patch needs and how every
reference is resolved; `output` turns the marked model into an `OutputObject` that `writer` serialises.
Objects compare by identity: two sections with the same bytes are still two sections.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

# ELF constants used across passes (values from the ELF gABI).
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_GROUP = 0, 1, 2, 3, 4, 8, 9, 17
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS = 0x1, 0x2, 0x4, 0x10, 0x20
SHF_INFO_LINK, SHF_GROUP, SHF_TLS = 0x40, 0x200, 0x400
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS = 0, 1, 2, 3, 4, 5, 6
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
# The ELF64 little-endian records the reader unpacks and the writer packs.
ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
ELF64_SHDR = struct.Struct("<IIQQQQIIQQ")
ELF64_SYM = struct.Struct("<IBBHQQ")
ELF64_RELA = struct.Struct("<QQq")
# Sections that describe other sections rather than hold code or data.
BOOKKEEPING_TYPES = (SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_REL, SHT_GROUP)


class Status(str, enum.Enum):
    SAME = "same"
    CHANGED = "changed"
    NEW = "new"


@dataclass(eq=False, slots=True)  # slots: an object holds tens of thousands (most of them in .debug_*)
class Relocation:
    offset: int  # within the section it applies to
    type: int  # arch relocation type number
    symbol: Symbol
    addend: int

    def __repr__(self) -> str:
        return f"<Rela {self.offset:#x} type={self.type} {self.symbol.display}{self.addend:+d}>"


@dataclass(eq=False)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addralign: int
    entsize: int
    data: bytes  # NOBITS sections hold zeros of their size
    link: int = 0
    info: int = 0
    relocations: list[Relocation] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)  # non-section symbols defined here
    section_symbol: Symbol | None = None
    group: Section | None = None  # the SHT_GROUP section it belongs to
    # set by passes
    twin: Section | None = None
    status: Status | None = None
    included: bool = False
    _named: tuple[int, list[Symbol]] = field(default=(-1, []), init=False, repr=False)

    def named_symbols(self) -> list[Symbol]:
        """`symbols` without the assembler's local labels (.L*). Asked for once per relocation and per
        compared symbol: computed again only when `symbols` has grown (readers only append to it)."""
        if self._named[0] != len(self.symbols):
            self._named = (len(self.symbols), [s for s in self.symbols
                                                if not (s.type == STT_NOTYPE and s.name.startswith(".L"))])
        return self._named[1]

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)

    @property
    def is_readonly_data(self) -> bool:
        """Data the running program never writes: read-only, or RELRO (`.data.rel.ro`), which is only
        written by the dynamic linker's relocation before the program runs."""
        return not self.is_text and (not self.is_writable or self.name.startswith(".data.rel.ro"))

    @property
    def is_strings(self) -> bool:
        return bool(self.flags & SHF_STRINGS)

    @property
    def is_nobits(self) -> bool:
        return self.type == SHT_NOBITS

    def symbol_at(self, offset: int) -> Symbol | None:
        """The named symbol whose extent covers `offset` (a zero-size one matches its exact address)."""
        best = None
        for sym in self.symbols:
            if sym.value <= offset < sym.value + sym.size or (sym.size == 0 and sym.value == offset):
                if best is None or (best.type == STT_NOTYPE and sym.type != STT_NOTYPE):
                    best = sym
        return best

    def __repr__(self) -> str:
        return f"<Section [{self.index}] {self.name}>"


@dataclass(eq=False)
class Symbol:
    index: int
    name: str
    type: int
    bind: int
    other: int  # st_other: visibility
    shndx: int
    value: int
    size: int
    section: Section | None = None
    # set by passes
    twin: Symbol | None = None
    status: Status | None = None
    alias_of: Symbol | None = None  # another name for the same function (gcc's NAME.localalias)
    parent: Symbol | None = None  # a .cold/.part piece's parent function
    children: list[Symbol] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why CHANGED (compare)

    @property
    def is_function(self) -> bool:
        return self.type == STT_FUNC

    @property
    def is_object(self) -> bool:
        return self.type in (STT_OBJECT, STT_TLS, STT_COMMON)

    @property
    def is_section(self) -> bool:
        return self.type == STT_SECTION

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def is_defined(self) -> bool:
        return self.shndx != SHN_UNDEF

    @property
    def display(self) -> str:
        """The name to show a user: section symbols are named after their section."""
        if self.is_section and self.section is not None:
            return self.section.name
        return self.name

    def __repr__(self) -> str:
        return f"<Symbol [{self.index}] {self.display}>"


@dataclass(eq=False)
class ObjectFile:
    path: str
    sections: list[Section]  # index order, SHT_NULL at 0; relocation sections stay listed
    symbols: list[Symbol]  # symtab order, the null symbol at 0
    source_file: str = ""  # the STT_FILE symbol's name

    def functions(self) -> list[Symbol]:
        """Defined functions, one symbol each: aliases are left out."""
        return [s for s in self.symbols if s.is_function and s.is_defined and s.alias_of is None]

    def section_named(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)



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
