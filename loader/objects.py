"""The ELF objects loaded in a process: where each is mapped, its build-id and its symbol tables.

Files are opened through /proc/PID/map_files, so the object read is the one mapped even when the file on
disk has since been replaced. Symbol tables are unpacked with `struct` (pyelftools locates the sections):
libc's thousands of symbols then cost milliseconds.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import cached_property

from typing import TYPE_CHECKING

from diffobj.model import ELF64_EHDR
from loader.procfs import Mapping, proc_dir

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

_SYM = struct.Struct("<IBBHQQ")
_PHDR = struct.Struct("<IIQQQQQQ")  # ELF64 program header
PT_LOAD = 1
STT_FUNC, STT_FILE, STT_TLS, STT_GNU_IFUNC = 2, 4, 6, 10
STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
VERSYM_HIDDEN = 0x8000


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    value: int  # link-time address (add the object's load base)
    size: int
    type: int
    bind: int
    shndx: int


@dataclass
class LoadedObject:
    """One ELF file mapped in the process."""

    path: str  # as /proc/PID/maps shows it
    file: str  # what we open to read it
    base: int  # load bias: runtime address = base + link-time address
    maps: list[Mapping] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path.removesuffix(" (deleted)"))

    @property
    def start(self) -> int:
        return min(m.start for m in self.maps)

    @property
    def end(self) -> int:
        return max(m.end for m in self.maps)

    @cached_property
    def _elf(self) -> tuple[ELFFile, object]:
        from elftools.elf.elffile import ELFFile  # not for `patch-ctl list`, which needs only the segments

        f = open(self.file, "rb")
        return ELFFile(f), f

    @property
    def elf(self) -> ELFFile:
        return self._elf[0]

    def section_data(self, name: str) -> tuple[int, bytes] | None:
        sec = self.elf.get_section_by_name(name)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            return None
        return sec["sh_addr"], sec.data()

    @cached_property
    def build_id(self) -> str:
        for sec in self.elf.iter_sections():
            if sec["sh_type"] == "SHT_NOTE":
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
        return ""

    def _symbols(self, table: str) -> list[ElfSymbol]:
        sec = self.elf.get_section_by_name(table)
        if sec is None:
            return []
        strtab = self.elf.get_section(sec["sh_link"]).data()
        hidden = []
        if table == ".dynsym":
            versym = self.elf.get_section_by_name(".gnu.version")
            if versym is not None:
                raw = versym.data()
                hidden = [v & VERSYM_HIDDEN for v in struct.unpack(f"<{len(raw) // 2}H", raw)]
        out = []
        for i, (st_name, info, _other, shndx, value, size) in enumerate(_SYM.iter_unpack(sec.data())):
            if i < len(hidden) and hidden[i]:
                continue  # a non-default version (memcpy@GLIBC_2.2.5): never what an unversioned name binds to
            end = strtab.find(b"\0", st_name)
            out.append(ElfSymbol(strtab[st_name:end].decode("utf-8", "replace"), value, size, info & 0xF,
                                 info >> 4, shndx))
        return out

    @cached_property
    def symtab(self) -> list[ElfSymbol]:
        return self._symbols(".symtab")

    @cached_property
    def dynsym(self) -> list[ElfSymbol]:
        return self._symbols(".dynsym")

    @cached_property
    def exports(self) -> dict[str, ElfSymbol]:
        """Defined global symbols the dynamic linker would bind other objects to."""
        out: dict[str, ElfSymbol] = {}
        for sym in self.dynsym:
            if sym.shndx != SHN_UNDEF and sym.bind in (STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE) and sym.name:
                if sym.name not in out or out[sym.name].bind == STB_WEAK:
                    out[sym.name] = sym
        return out

    @cached_property
    def globals(self) -> dict[str, ElfSymbol]:
        """Defined global symbols of the object itself (its .symtab when present: hidden ones too)."""
        out = dict(self.exports)
        for sym in self.symtab:
            if sym.shndx != SHN_UNDEF and sym.bind != STB_LOCAL and sym.name and sym.type != STT_FILE:
                if sym.name not in out or out[sym.name].bind == STB_WEAK:
                    out[sym.name] = sym
        return out

    def locals_named(self, name: str) -> list[ElfSymbol]:
        """Local symbols called `name`, in .symtab order (livepatch's sympos counts them from 1)."""
        return [s for s in self.symtab if s.bind == STB_LOCAL and s.name == name and s.shndx != SHN_UNDEF]

    def close(self) -> None:
        if "_elf" in self.__dict__:
            self._elf[1].close()


def _load_segments(f) -> list[tuple[int, int]]:
    """(p_offset, p_vaddr) of each PT_LOAD segment of the 64-bit ELF file `f`; none when it is not one."""
    head = f.read(ELF64_EHDR.size)
    if len(head) < ELF64_EHDR.size or head[:5] != b"\x7fELF\x02":
        return []
    e_phoff, e_phentsize, e_phnum = (ELF64_EHDR.unpack(head)[i] for i in (5, 9, 10))
    if e_phentsize != _PHDR.size:
        return []
    f.seek(e_phoff)
    table = f.read(e_phnum * _PHDR.size)  # at most 65,535 entries
    return [(p[2], p[3]) for p in _PHDR.iter_unpack(table[:len(table) - len(table) % _PHDR.size])
            if p[0] == PT_LOAD]


def loaded_objects(pid: int, maps: list[Mapping]) -> list[LoadedObject]:
    """The ELF files mapped in the process, in map order (the executable first, as the dynamic linker
    orders its global scope), with their load bias."""
    by_path: dict[str, list[Mapping]] = {}
    for m in maps:
        if m.path.startswith("/") and m.inode:
            by_path.setdefault(m.path, []).append(m)
    objects = []
    for path, ms in by_path.items():
        first = min(ms, key=lambda m: (m.offset, m.start))
        file = f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"
        if not os.path.exists(file):
            file = f"{proc_dir(pid)}/root{path}"
        try:
            with open(file, "rb") as f:
                loads = _load_segments(f)
        except OSError:
            continue
        if not loads:
            continue
        obj = LoadedObject(path, file, 0, sorted(ms, key=lambda m: m.start))
        page = 4096
        ref_offset, ref_vaddr = min(loads)
        # the mapping of the file page that holds the first loadable segment gives the bias
        for m in obj.maps:
            if m.offset == ref_offset & ~(page - 1):
                obj.base = m.start - (ref_vaddr & ~(page - 1))
                break
        else:
            continue
        objects.append(obj)
    return objects
