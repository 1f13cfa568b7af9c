"""A relocatable ELF object as plain data: its sections (contents included), symbols and relocations, each
tied to the section it belongs to. `elfcore.read` fills it; the differ extends it with what its passes set
(diffobj.model). Objects compare by identity: two sections with the same bytes are still two sections.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from patch_build.elfcore.constants import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_STRINGS,
    SHF_WRITE,
    SHN_UNDEF,
    SHT_NOBITS,
    STB_LOCAL,
    STT_COMMON,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
)


@dataclass(eq=False, slots=True)  # slots: an object holds tens of thousands (most in .debug_*)
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
    data: bytes  # NOBITS sections hold zeros of their size; a property over this field: below the class
    link: int = 0
    info: int = 0
    relocations: list[Relocation] = field(default_factory=list)  # a property over this field: below the class
    symbols: list[Symbol] = field(default_factory=list)  # non-section symbols defined here
    section_symbol: Symbol | None = None
    group: Section | None = None  # the SHT_GROUP section it belongs to
    _named: tuple[int, list[Symbol]] = field(default=(-1, []), init=False, repr=False)

    def defer_relocations(self, read: Callable[[], list[Relocation]]) -> None:
        """Have `read` give the section's relocations when they are first asked for."""
        self._unread = read

    def defer_data(self, size: int, read: Callable[[], bytes]) -> None:
        """Have `read` give the section's contents, `size` bytes, when they are first asked for."""
        self._unread_data = (size, read)

    def named_symbols(self) -> list[Symbol]:
        """`symbols` without the assembler's local labels (.L*). Asked for once per relocation and per
        compared symbol: computed again only when `symbols` has grown (readers only append to it)."""
        if self._named[0] != len(self.symbols):
            self._named = (len(self.symbols), [s for s in self.symbols
                                                if not (s.type == STT_NOTYPE and s.name.startswith(".L"))])
        return self._named[1]

    @property
    def size(self) -> int:
        return self._unread_data[0] if self._unread_data is not None else len(self._data)

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


def _relocations(sec: Section) -> list[Relocation]:
    if sec._unread is not None:
        sec._relocations, sec._unread = sec._unread(), None
    return sec._relocations


def _set_relocations(sec: Section, relocations: list[Relocation]) -> None:
    sec._relocations, sec._unread = relocations, None


def _data(sec: Section) -> bytes:
    if sec._unread_data is not None:
        sec._data, sec._unread_data = sec._unread_data[1](), None
    return sec._data


def _set_data(sec: Section, data: bytes) -> None:
    sec._data, sec._unread_data = data, None


# Set once @dataclass has made __init__, which assigns the fields through them (dataclasses.replace too): the
# contents and relocations of a section the differ never compares (debug information) are then read from the
# file and decoded only if asked for.
Section.relocations = property(_relocations, _set_relocations, doc="The relocations that apply to the section, "
                               "in offset order (read from the file when first asked for, if deferred).")
Section.data = property(_data, _set_data, doc="The section's contents (read from the file when first asked for, "
                        "if deferred).")


@dataclass(eq=False, slots=True)  # slots: a kernel unit holds thousands, each a dict's size less
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
    alias_of: Symbol | None = None  # another name for the same function (gcc's NAME.localalias)
    prefix_of: Symbol | None = None  # the kernel's `__pfx_NAME` (CALL_PADDING): the padding before NAME, its part

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
        """Defined functions, one symbol each: aliases and padding prefixes are left out."""
        return [s for s in self.symbols
                if s.is_function and s.is_defined and s.alias_of is None and s.prefix_of is None]

    def section_named(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)
