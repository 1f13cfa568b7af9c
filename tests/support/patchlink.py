"""Link a differ output into a running program with the real GNU ld, independent of our loader.

The method: the original program is a non-PIE executable. Every undefined symbol of OUT.o is defined in
a generated linker script as the absolute address it has in that program (plain names from its symbol
table, where hidden globals have become LOCAL HIDDEN, or its PLT; `.kpatch.sym.OBJ.NAME,POS` from its local
symbols, livepatch numbering), and OUT.o is linked alone at a fixed far address into `patch.elf`. A shared
library's symbol that the program has no PLT entry for and that OUT.o uses only through 64-bit data
(e.g. a copied `DW.ref.__gxx_personality_v0` cell) is bound at run time by the shim, as the dynamic linker
binds the program's own cells. The LD_PRELOAD shim (patchshim.c) maps
patch.elf's segments at the program's patch point and jumps each old function to its new copy; the
pairs come from patch.elf's `.kpatch.funcs`, whose pointers ld has resolved.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from patch_build.elfcore.constants import SHF_ALLOC
from patch_build.elfcore.x86_64 import R_X86_64_64
from patch_build.patchformat.names import is_reference, parse_reference
from patch_build.patchformat.sections import FUNCS, records

PATCH_BASE = 0x10000000  # within rel32 range of a non-PIE program at 0x400000, and of 32-bit absolutes
SHIM_SOURCE = Path(__file__).with_name("patchshim.c")


class LinkError(AssertionError):
    """The patch could not be linked into the program (a test failure, with the reason)."""


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    value: int
    size: int
    type: str  # STT_FUNC, STT_OBJECT, ...
    bind: str  # STB_LOCAL, STB_GLOBAL, STB_WEAK
    shndx: object  # int, or "SHN_UNDEF"/"SHN_ABS"/...
    visibility: str = "STV_DEFAULT"


@dataclass(frozen=True)
class PatchFunc:
    """One resolved `.kpatch.funcs` entry of a linked patch."""

    new_addr: int
    new_size: int
    old_addr: int
    old_size: int
    sympos: int
    name: str
    objname: str


def symbols(path: str | os.PathLike) -> list[ElfSymbol]:
    """The .symtab of an ELF file, in order, version suffixes (`puts@GLIBC_2.2.5`) stripped."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        tab = elf.get_section_by_name(".symtab")
        if not isinstance(tab, SymbolTableSection):
            raise LinkError(f"{path}: no .symtab")
        return [ElfSymbol(s.name.split("@")[0], s["st_value"], s["st_size"], s["st_info"]["type"],
                          s["st_info"]["bind"], s["st_shndx"], s["st_other"]["visibility"])
                for s in tab.iter_symbols()]


def plt_entries(program: str | os.PathLike) -> dict[str, int]:
    """Address of each `NAME@plt` stub of a non-PIE program (objdump names them from the relocations)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(program)], check=True,
                         capture_output=True, text=True).stdout
    return {m.group(2): int(m.group(1), 16) for m in re.finditer(r"^([0-9a-f]+) <([^@>]+)@plt>:", out, re.M)}


class ProgramSymbols:
    """Resolves OUT.o's references to the original against one linked program."""

    def __init__(self, program: str | os.PathLike, objname: str):
        self.program = Path(program)
        self.objname = objname
        self.syms = symbols(program)
        self.plt = plt_entries(program)

    def _locals(self, name: str) -> list[ElfSymbol]:
        return [s for s in self.syms if s.name == name and s.bind == "STB_LOCAL"
                and s.type in ("STT_FUNC", "STT_OBJECT", "STT_TLS") and s.shndx != "SHN_UNDEF"]

    def local(self, name: str, pos: int) -> ElfSymbol:
        """The POS-th local NAME (livepatch numbering: 0 = the only one, else 1-based in symtab order)."""
        found = self._locals(name)
        if pos == 0:
            if len(found) != 1:
                raise LinkError(f"local {name!r} with sympos 0 must be unique in {self.program.name}, "
                                f"found {len(found)}")
            return found[0]
        if not 1 <= pos <= len(found):
            raise LinkError(f"local {name!r} has no position {pos} in {self.program.name} ({len(found)} found)")
        return found[pos - 1]

    def sympos_in_file(self, name: str, source_file: str) -> int:
        """The livepatch position of the local NAME that the unit SOURCE_FILE (its STT_FILE name) defines."""
        current, found = None, []
        for s in self.syms:
            if s.type == "STT_FILE":
                current = s.name
            elif (s.name == name and s.bind == "STB_LOCAL" and s.type in ("STT_FUNC", "STT_OBJECT", "STT_TLS")
                  and s.shndx != "SHN_UNDEF"):
                found.append(current)
        if found.count(source_file) != 1:
            raise LinkError(f"{source_file} defines {found.count(source_file)} locals named {name!r} in "
                            f"{self.program.name}")
        return 0 if len(found) == 1 else found.index(source_file) + 1

    def address(self, name: str) -> int | None:
        """Absolute address of an OUT.o undefined symbol in the program; None for a shared library's symbol
        the program neither defines nor has a PLT entry for (bound at run time if the patch allows)."""
        if is_reference(name, kernel=False):
            try:
                ref = parse_reference(name, kernel=False, objnames=[self.objname])
            except ValueError as e:
                raise LinkError(str(e)) from None
            return self.local(ref.name, ref.pos).value
        defined = [s for s in self.syms if s.name == name and s.bind != "STB_LOCAL" and s.shndx != "SHN_UNDEF"
                   and s.type != "STT_FILE"]
        if defined:
            return defined[0].value
        hidden = [s for s in self._locals(name) if s.visibility in ("STV_HIDDEN", "STV_INTERNAL")]
        if len(hidden) == 1:  # a hidden global of the units: ld made it LOCAL in the program
            return hidden[0].value
        if name in self.plt:
            return self.plt[name]
        return None

    def function(self, name: str, sympos: int) -> ElfSymbol:
        """The program's function NAME at livepatch position SYMPOS (global or local)."""
        glob = [s for s in self.syms if s.name == name and s.type == "STT_FUNC" and s.bind != "STB_LOCAL"
                and s.shndx != "SHN_UNDEF"]
        if glob and sympos == 0:
            return glob[0]
        return self.local(name, sympos)


def undefined_symbols(obj: str | os.PathLike) -> list[str]:
    return sorted({s.name for s in symbols(obj)[1:] if s.shndx == "SHN_UNDEF" and s.name})


def relocation_types(obj: str | os.PathLike) -> dict[str, set[int]]:
    """Relocation types used against each named symbol of an object."""
    types: dict[str, set[int]] = {}
    with open(obj, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                for r in sec.iter_relocations():
                    name = symtab.get_symbol(r["r_info_sym"]).name
                    types.setdefault(name, set()).add(r["r_info_type"])
    return types


def runtime_bound(obj: str | os.PathLike, program: ProgramSymbols) -> set[str]:
    """Undefined symbols of OBJ the program cannot resolve statically: each must be used through R_X86_64_64
    only (data), which the shim binds at run time; a code reference to one is a link failure."""
    unresolved = {n for n in undefined_symbols(obj) if n != "_GLOBAL_OFFSET_TABLE_" and program.address(n) is None}
    types = relocation_types(obj)
    for name in unresolved:
        if types.get(name, set()) - {R_X86_64_64}:
            raise LinkError(f"{name}: not defined in {program.program.name}, no PLT entry, and used by code")
    return unresolved


def linker_script(obj: str | os.PathLike, program: ProgramSymbols, late: set[str]) -> str:
    """Place OUT.o at PATCH_BASE; define each reference at its program address (LATE ones: 0, bound later)."""
    lines = ["SECTIONS", "{", f"  . = {PATCH_BASE:#x};",
             "  .text : { *(.text .text.*) }",
             "  . = ALIGN(0x1000);",
             "  .rodata : { *(.rodata .rodata.*) }",
             "  .gcc_except_table : { *(.gcc_except_table .gcc_except_table.*) }",
             "  .eh_frame : { KEEP(*(.eh_frame)) LONG(0) }",  # the zero terminator crtend.o would add
             "  .kpatch.strings : { *(.kpatch.strings) }",
             "  . = ALIGN(0x1000);",
             "  .data : { *(.data .data.* .data.rel.ro .data.rel.ro.*) }",
             "  .kpatch.funcs : { *(.kpatch.funcs) }",
             "  .bss : { *(.bss .bss.*) *(COMMON) }",
             "}"]
    for name in undefined_symbols(obj):
        if name == "_GLOBAL_OFFSET_TABLE_":
            continue  # ld makes its own
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'"{quoted}" = {0 if name in late else program.address(name):#x};')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LinkedPatch:
    elf: Path  # patch.elf
    bindings: list[tuple[int, str, int]]  # cells the shim fills at run time: (address, symbol, addend)


def link_patch(obj: str | os.PathLike, program: ProgramSymbols, workdir: str | os.PathLike) -> LinkedPatch:
    """ld OUT.o at PATCH_BASE with every reference defined at its address in the program."""
    workdir = Path(workdir)
    script = workdir / "patch.ld"
    late = runtime_bound(obj, program)
    script.write_text(linker_script(obj, program, late))
    elf = workdir / "patch.elf"
    # --emit-relocs keeps the relocations, so the run-time bindings can be found in patch.elf
    run = subprocess.run(["ld", "--emit-relocs", "-o", str(elf), "-T", str(script), "-e", "0", "-z", "noexecstack",
                          str(obj)], capture_output=True, text=True)
    if run.returncode != 0:
        raise LinkError(f"ld failed for {obj}:\n{run.stderr}\nscript:\n{script.read_text()}")
    return LinkedPatch(elf, runtime_bindings(elf, late))


def patch_funcs(elf_path: str | os.PathLike) -> list[PatchFunc]:
    """The `.kpatch.funcs` entries of a linked patch.elf, with name pointers followed."""
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        funcs = elf.get_section_by_name(FUNCS)
        if funcs is None:
            raise LinkError(f"{elf_path}: no {FUNCS} output section")
        try:
            entries = records(funcs.data())
        except ValueError as e:
            raise LinkError(str(e)) from None
        segments = [(s.header.sh_addr, s.data()) for s in elf.iter_sections()
                    if s.header.sh_flags & SHF_ALLOC and s.header.sh_type != "SHT_NOBITS"]

    def string_at(addr: int) -> str:
        for base, data in segments:
            if base <= addr < base + len(data):
                end = data.index(b"\0", addr - base)
                return data[addr - base:end].decode()
        raise LinkError(f"string pointer {addr:#x} in .kpatch.funcs points nowhere in {elf_path}")

    return [PatchFunc(e.new_addr, e.new_size, e.old_addr, e.old_size, e.sympos, string_at(e.name), string_at(e.objname))
            for e in entries]


def build_shim(workdir: str | os.PathLike) -> Path:
    so = Path(workdir) / "patchshim.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(so), str(SHIM_SOURCE)],
                   check=True, capture_output=True, text=True)
    return so


def redirects(funcs: list[PatchFunc], program: ProgramSymbols) -> list[tuple[int, int]]:
    """(old address in the program, new address in patch.elf) for every entry, checked against both."""
    pairs = []
    for fn in funcs:
        if fn.objname != program.objname:
            raise LinkError(f"{fn.name}: objname {fn.objname!r}, expected {program.objname!r}")
        old = program.function(fn.name, fn.sympos)
        if fn.old_addr not in (0, old.value):
            raise LinkError(f"{fn.name}: old_addr {fn.old_addr:#x}, program has it at {old.value:#x}")
        if fn.old_size != old.size:
            raise LinkError(f"{fn.name}: old_size {fn.old_size}, program's function is {old.size} bytes")
        if fn.new_addr < PATCH_BASE or fn.new_size == 0:
            raise LinkError(f"{fn.name}: new_addr {fn.new_addr:#x} size {fn.new_size} not in the patch")
        pairs.append((old.value, fn.new_addr))
    return pairs


def runtime_bindings(elf_path: str | os.PathLike, names: set[str]) -> list[tuple[int, str, int]]:
    """(address, symbol, addend) of each R_X86_64_64 in patch.elf against one of NAMES (kept by --emit-relocs)."""
    out = []
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                for r in sec.iter_relocations():
                    name = symtab.get_symbol(r["r_info_sym"]).name
                    if name in names and r["r_info_type"] == R_X86_64_64:
                        out.append((r["r_offset"], name, r["r_addend"]))
    return out


def eh_frame_address(elf_path: str | os.PathLike) -> int | None:
    """Address of patch.elf's .eh_frame when it holds any entry (beyond the terminator)."""
    with open(elf_path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".eh_frame")
        return sec.header.sh_addr if sec is not None and sec.header.sh_size > 4 else None


def run_with_patch(program: str | os.PathLike, shim: str | os.PathLike, patch: LinkedPatch,
                   pairs: list[tuple[int, int]]) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_PRELOAD=str(shim), PATCHSHIM_ELF=str(patch.elf),
               PATCHSHIM_REDIRECTS=",".join(f"{o:x}:{n:x}" for o, n in pairs),
               PATCHSHIM_BIND=",".join(f"{a:x}:{name}:{addend:x}" for a, name, addend in patch.bindings))
    eh_frame = eh_frame_address(patch.elf)
    if eh_frame is not None:
        env["PATCHSHIM_EH_FRAME"] = f"{eh_frame:x}"
    return subprocess.run([str(program)], env=env, capture_output=True, text=True, timeout=30)
