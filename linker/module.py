"""Read a user-space patch module (`NAME.kpatch`) back into plain data, statically.

The module is an ELF relocatable object; its pointers (`char *name`, `new_addr`, ...) are R_X86_64_64
relocations, so reading it means resolving each relocation to (section, offset) and reading what lies there.
`patch-ctl info` prints a `ModuleInfo`; the loader uses it to know what to patch and which target to expect.
Layouts: docs/design.md (`.kpatch.funcs`, `.kpatch.targets`, `.kpatch.module`, `.kpatch.integrity`).
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from diffobj.errors import InputError
from linker.integrity import Seal, examine, read_module_bytes
from patchformat.sections import (FUNCS, MODULE, MODULE_ENTRY, MODULE_VERSION, OFFSET, RECORD, STRINGS, TARGET_ENTRY,
                                  TARGETS)

if TYPE_CHECKING:  # pyelftools is imported by the first module read (`patch-ctl list` reads none)
    from elftools.elf.elffile import ELFFile

R_X86_64_64 = 1
EM_X86_64 = 62


@dataclass
class Target:
    name: str  # basename of the patched file (executable or shared library)
    build_id: str  # lowercase hex GNU build-id


@dataclass
class Func:
    name: str  # the original function's name in the target
    objname: str  # basename of the target file that holds it
    sympos: int  # position among same-named locals of objname (0 = unique)
    old_size: int
    new_size: int
    new_symbol: str  # the module's symbol for the replacement function
    old_addr: int = 0  # 0: resolved at load time by name


@dataclass
class ModuleInfo:
    path: str
    name: str
    version: int
    targets: list[Target] = field(default_factory=list)
    funcs: list[Func] = field(default_factory=list)  # one per replaced function (identical duplicates merged)
    problems: list[str] = field(default_factory=list)  # why the module is not well-formed; empty when valid
    seal: Seal | None = None  # its integrity record (linker.integrity)

    @property
    def valid(self) -> bool:
        return not self.problems


class _Module:
    """The ELF file with what is needed to resolve pointers: symbols and relocations per section."""

    def __init__(self, elf: ELFFile):
        from elftools.elf.relocation import RelocationSection
        from elftools.elf.sections import SymbolTableSection

        self.elf = elf
        self.symtab = next((s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
        self.symbols = list(self.symtab.iter_symbols()) if self.symtab is not None else []
        self.data: dict[int, bytes] = {}
        self.relocs: dict[int, dict[int, tuple[int, object, int]]] = {}  # shndx -> offset -> (type, sym, addend)
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec["sh_type"] == "SHT_RELA":
                table = self.relocs.setdefault(sec["sh_info"], {})
                for rel in sec.iter_relocations():
                    sym = self.symbols[rel["r_info_sym"]] if rel["r_info_sym"] < len(self.symbols) else None
                    table[rel["r_offset"]] = (rel["r_info_type"], sym, rel["r_addend"])

    def section(self, name: str):
        """The section called `name` and its index, or (None, None)."""
        for i, sec in enumerate(self.elf.iter_sections()):
            if sec.name == name:
                return i, sec
        return None, None

    def contents(self, index: int) -> bytes:
        if index not in self.data:
            sec = self.elf.get_section(index)
            self.data[index] = b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
        return self.data[index]

    def pointer(self, shndx: int, offset: int) -> tuple[object, int] | None:
        """The (symbol, addend) an R_X86_64_64 at `offset` of section `shndx` points to, or None."""
        rel = self.relocs.get(shndx, {}).get(offset)
        if rel is None or rel[0] != R_X86_64_64 or rel[1] is None:
            return None
        return rel[1], rel[2]

    def target_of(self, sym, addend: int) -> tuple[int, int] | None:
        """(section index, offset) a defined symbol + addend designates."""
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int) or shndx == 0:
            return None
        return shndx, sym["st_value"] + addend

    def string(self, shndx: int, offset: int, what: str, problems: list[str]) -> str:
        """The NUL-terminated string a pointer field points to; '' and a problem when it cannot be read."""
        ptr = self.pointer(shndx, offset)
        if ptr is None:
            problems.append(f"{what}: no R_X86_64_64 relocation at {self.elf.get_section(shndx).name}+{offset:#x}")
            return ""
        place = self.target_of(*ptr)
        if place is None:
            problems.append(f"{what}: points to undefined symbol {ptr[0].name!r}")
            return ""
        sec_index, at = place
        sec = self.elf.get_section(sec_index)
        if sec.name != STRINGS:
            problems.append(f"{what}: points into {sec.name}, not {STRINGS}")
        data = self.contents(sec_index)
        end = data.find(b"\0", at)
        if not 0 <= at < len(data) or end < 0:
            problems.append(f"{what}: string at {sec.name}+{at:#x} is out of bounds or not terminated")
            return ""
        return data[at:end].decode("utf-8", "replace")

    def function_symbol(self, shndx: int, offset: int, what: str, problems: list[str]) -> str:
        """The name of the function a `new_addr` field points to (a section symbol + addend is resolved)."""
        ptr = self.pointer(shndx, offset)
        if ptr is None:
            problems.append(f"{what}: no R_X86_64_64 relocation for new_addr")
            return ""
        sym, addend = ptr
        if sym["st_info"]["type"] == "STT_FUNC" and addend == 0:
            return sym.name
        place = self.target_of(sym, addend)
        if place is None:
            problems.append(f"{what}: new_addr points to undefined symbol {sym.name!r}")
            return sym.name
        for cand in self.symbols:
            if (cand["st_info"]["type"] == "STT_FUNC" and cand["st_shndx"] == place[0]
                    and cand["st_value"] == place[1]):
                return cand.name
        problems.append(f"{what}: new_addr points to no function ({self.elf.get_section(place[0]).name}+{place[1]:#x})")
        return ""


def _entries(mod: _Module, name: str, entry: struct.Struct, problems: list[str], required: bool = True):
    """(section index, offset, fields) for each entry of a metadata section."""
    index, sec = mod.section(name)
    if sec is None:
        if required:
            problems.append(f"no {name} section")
        return []
    data = mod.contents(index)
    if len(data) % entry.size:
        problems.append(f"{name} is {len(data)} bytes, not a multiple of {entry.size}")
    return [(index, off, entry.unpack_from(data, off)) for off in range(0, len(data) - entry.size + 1, entry.size)]


def read_module(path: str | os.PathLike, data: bytes | None = None) -> ModuleInfo:
    """Read NAME.kpatch (its bytes `data`, when the caller has read them). Raises InputError when it is not
    a readable x86-64 ELF relocatable object with `.kpatch.funcs` and `.kpatch.integrity` sections; any
    other inconsistency is listed in `ModuleInfo.problems`, a failed integrity check first."""
    path = os.fspath(path)
    base = os.path.basename(path)
    if data is None:
        data = read_module_bytes(path)
    seal = examine(path, data)  # validates the ELF and section headers first
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_type"] != "ET_REL" or elf["e_machine"] != "EM_X86_64" or elf.elfclass != 64:
            raise InputError(f"{base}: not an x86-64 ELF relocatable object")
        mod = _Module(elf)
        if mod.section(FUNCS)[1] is None:
            raise InputError(f"{base}: not a patch module (no {FUNCS} section)")
        return _read(path, mod, seal)
    except (ELFError, struct.error, KeyError, IndexError) as e:
        raise InputError(f"{base}: malformed ELF file ({e})") from None


def _read(path: str, mod: _Module, seal: Seal) -> ModuleInfo:
    problems: list[str] = [seal.problem] if seal.problem else []
    name, version = "", 0
    module_entries = _entries(mod, MODULE, MODULE_ENTRY, problems)
    if len(module_entries) != 1 and module_entries:
        problems.append(f"{MODULE} has {len(module_entries)} entries, expected 1")
    if module_entries:
        shndx, off, (_, version) = module_entries[0]
        name = mod.string(shndx, off, "module name", problems)
        if version != MODULE_VERSION:
            problems.append(f"module format version {version}, expected {MODULE_VERSION}")

    targets = []
    for shndx, off, _ in _entries(mod, TARGETS, TARGET_ENTRY, problems):
        what = f"target {len(targets)}"
        targets.append(Target(mod.string(shndx, off, what + " name", problems),
                              mod.string(shndx, off + 8, what + " build-id", problems)))
    if not targets:
        problems.append("no target recorded")
    for t in targets:
        if t.build_id and not all(c in "0123456789abcdef" for c in t.build_id):
            problems.append(f"target {t.name}: build-id {t.build_id!r} is not lowercase hex")

    funcs = []
    for shndx, off, (_, new_size, old_addr, old_size, sympos, _, _) in _entries(mod, FUNCS, RECORD, problems):
        what = f"{FUNCS} entry {len(funcs)}"
        func = Func(name=mod.string(shndx, off + OFFSET["name"], what + " name", problems),
                    objname=mod.string(shndx, off + OFFSET["objname"], what + " objname", problems),
                    sympos=sympos, old_size=old_size, new_size=new_size,
                    new_symbol=mod.function_symbol(shndx, off + OFFSET["new_addr"], what, problems),
                    old_addr=old_addr)
        funcs.append(func)
    if not funcs:
        problems.append(f"{FUNCS} is empty")
    names = {t.name for t in targets}
    for func in funcs:
        if func.objname and func.objname not in names:
            problems.append(f"function {func.name}: objname {func.objname!r} is not a recorded target")
    # An inline or template function defined in several units is replaced by each of their patch objects: the
    # module then holds identical entries for the one function the target runs. They count once.
    unique: dict[tuple[str, str, int], Func] = {}
    for func in funcs:
        key = (func.objname, func.name, func.sympos)
        first = unique.setdefault(key, func)
        if first is not func and (first.new_size, first.old_size, first.new_symbol) != (
                func.new_size, func.old_size, func.new_symbol):
            problems.append(f"function {func.name} ({func.objname}, sympos {func.sympos}) is replaced twice, "
                            "differently")
    funcs = list(unique.values())
    return ModuleInfo(path=path, name=name, version=version, targets=targets, funcs=funcs, problems=problems,
                      seal=seal)
