"""An ELF file of any type, open for reading what a loader or a checker asks of it by name: a section's
contents, the GNU build-id, the symbol tables, the GOT slots, the program interpreter and the libraries it
needs, the DWARF. pyelftools underneath, imported when the first file is opened (`patch-ctl list` opens
none); whatever pyelftools runs into in a malformed file is one InputError naming the file.
"""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from patch_build.common.errors import InputError
from patch_build.elfcore import notes
from patch_build.elfcore.parsing import pyelftools_errors
from patch_build.elfcore.symbols import ElfSymbol, got_slots, symbol_table

if TYPE_CHECKING:
    from elftools.dwarf.dwarfinfo import DWARFInfo


class ElfFile:
    """The ELF file at `path`, kept open until `close` (a `with` block closes it). OSError when it cannot be
    opened; InputError naming it when it is not readable as ELF."""

    def __init__(self, path: str | os.PathLike):
        from elftools.elf.elffile import ELFFile

        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        try:
            with self._reading():
                self._elf = ELFFile(self._file)
        except InputError:
            self._file.close()
            raise

    @contextlib.contextmanager
    def _reading(self):
        try:
            yield
        except pyelftools_errors() as e:
            raise InputError(f"{os.path.basename(self.path)}: not a readable ELF file ({e})") from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def section_data(self, name: str) -> tuple[int, bytes] | None:
        """(sh_addr, contents) of the section called `name`; None when there is none or it is NOBITS."""
        with self._reading():
            sec = self._elf.get_section_by_name(name)
            if sec is None or sec["sh_type"] == "SHT_NOBITS":
                return None
            return sec["sh_addr"], sec.data()

    def build_id(self) -> str | None:
        """The GNU build-id as lowercase hex, or None."""
        with self._reading():
            return notes.build_id(self._elf)

    def symbols(self, table: str) -> list[ElfSymbol]:
        """The symbols of `table` (".symtab" or ".dynsym"), as `symbols.symbol_table` gives them."""
        with self._reading():
            return symbol_table(self._elf, table)

    def got_slots(self) -> dict[str, int]:
        """Symbol name -> link-time address of its GOT slot (`symbols.got_slots`)."""
        with self._reading():
            return got_slots(self._elf)

    def interpreted(self) -> bool:
        """Whether the program names a program interpreter (PT_INTERP): the dynamic linker starts it."""
        with self._reading():
            return any(seg["p_type"] == "PT_INTERP" for seg in self._elf.iter_segments())

    def needed(self) -> list[str]:
        """The libraries the file needs (its DT_NEEDED entries), in order."""
        with self._reading():
            dynamic = self._elf.get_section_by_name(".dynamic")
            if dynamic is None:
                return []
            return [tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]

    def dwarf(self) -> DWARFInfo | None:
        """pyelftools' DWARFInfo of a linked file (relocatable objects: `elfcore.dwarf.read_dwarf`), None
        without DWARF. It parses lazily: reading it can still fail on malformed data. The link applied the
        debug sections' relocations: those it kept (-Wl,--emit-relocs) are not applied again (pyelftools
        would, and refuses the TLS ones)."""
        with self._reading():
            if self._elf.get_section_by_name(".debug_info") is None or not self._elf.has_dwarf_info():
                return None
            return self._elf.get_dwarf_info(relocate_dwarf_sections=False)
