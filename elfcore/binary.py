"""A linked binary (executable or shared library) read whole: its type, GNU build-id, `.symtab`, and its
contents by virtual address, as the program's loadable segments lay them out."""
from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass, field

from patch_build.common.errors import InputError
from patch_build.common.inputfile import read_input
from patch_build.elfcore import notes
from patch_build.elfcore.constants import EM_X86_64, SHF_ALLOC, SHF_TLS
from patch_build.elfcore.headers import elf_type
from patch_build.elfcore.parsing import pyelftools_errors
from patch_build.elfcore.read import MAX_OBJECT_SIZE
from patch_build.elfcore.structs import EHDR
from patch_build.elfcore.symbols import ElfSymbol, symbol_table


@dataclass
class LinkedBinary:
    e_type: int
    x86_64: bool  # a 64-bit x86-64 file
    build_id: str | None
    symtab: list[ElfSymbol]  # in table order, the null symbol first
    _blob: bytes = field(repr=False)
    _loads: list[tuple[int, int, int, int]] = field(repr=False)  # p_vaddr, p_offset, p_filesz, p_memsz
    # sh_addr, sh_size, name of the sections that take addresses (a .tbss overlaps what follows it)
    _sections: list[tuple[int, int, str]] = field(repr=False)

    def read(self, address: int, size: int) -> bytes:
        """Up to `size` bytes at `address` as the program is loaded (zeros past a segment's file contents);
        fewer when the segment ends first, none outside every segment."""
        for vaddr, offset, filesz, memsz in self._loads:
            if vaddr <= address < vaddr + memsz:
                start = address - vaddr
                end = min(start + size, memsz)
                in_file = self._blob[offset + start:offset + min(end, filesz)] if start < filesz else b""
                return in_file + bytes(end - start - len(in_file))
        return b""

    def section(self, name: str) -> tuple[int, int] | None:
        """(address, size) of the allocated section called `name`, or None."""
        return next(((addr, size) for addr, size, sec in self._sections if sec == name), None)

    def section_data(self, name: str) -> tuple[int, bytes] | None:
        """(address, contents as loaded) of the allocated section called `name`, or None."""
        found = self.section(name)
        return None if found is None else (found[0], self.read(*found))

    def section_name(self, address: int) -> str:
        """The allocated section `address` lies in, or ''."""
        i = bisect.bisect_right(self._sections, (address, 1 << 64)) - 1
        if i >= 0 and address < self._sections[i][0] + self._sections[i][1]:
            return self._sections[i][2]
        return ""


def read_binary(path: str | os.PathLike) -> LinkedBinary:
    """Read the ELF file at `path`; InputError when it is not a readable ELF file."""
    from elftools.elf.elffile import ELFFile  # imported by the first file read

    blob = read_input(path, "ELF file", MAX_OBJECT_SIZE)
    name = os.path.basename(path)
    try:
        elf = ELFFile(io.BytesIO(blob))
        loads = sorted((seg["p_vaddr"], seg["p_offset"], seg["p_filesz"], seg["p_memsz"])
                       for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
        sections = sorted((sec["sh_addr"], sec["sh_size"], sec.name) for sec in elf.iter_sections()
                          if sec["sh_flags"] & SHF_ALLOC and sec["sh_size"]
                          and not (sec["sh_flags"] & SHF_TLS and sec["sh_type"] == "SHT_NOBITS"))
        _, _, e_machine, *_ = EHDR.unpack_from(blob)
        x86_64 = elf.elfclass == 64 and e_machine == EM_X86_64
        return LinkedBinary(e_type=elf_type(blob), x86_64=x86_64, build_id=notes.build_id(elf),
                            symtab=symbol_table(elf, ".symtab"), _blob=blob, _loads=loads, _sections=sections)
    except pyelftools_errors() as e:
        raise InputError(f"{name}: not a readable ELF file ({e})") from None
