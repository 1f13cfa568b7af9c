"""The ELF objects loaded in a process: where each is mapped, its build-id and its symbol tables.

Files are opened through /proc/PID/map_files, so the object read is the one mapped even when the file on
disk has since been replaced. Symbol tables and the build-id are elfcore's reading.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from patch_build.elfcore.constants import SHN_UNDEF, STB_GLOBAL, STB_GNU_UNIQUE, STB_LOCAL, STB_WEAK, STT_FILE
from patch_build.elfcore.elffile import ElfFile
from patch_build.elfcore.segments import load_segments
from patch_build.elfcore.symbols import ElfSymbol
from patch_build.loader.procfs import Mapping, proc_dir


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
    def elf(self) -> ElfFile:
        """The file, opened when first asked for: `patch-ctl list` needs only the segments."""
        return ElfFile(self.file)

    @cached_property
    def build_id(self) -> str:
        return self.elf.build_id() or ""

    @cached_property
    def symtab(self) -> list[ElfSymbol]:
        return self.elf.symbols(".symtab")

    @cached_property
    def dynsym(self) -> list[ElfSymbol]:
        return self.elf.symbols(".dynsym")

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
        if "elf" in self.__dict__:
            self.elf.close()


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
                loads = load_segments(f)
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
