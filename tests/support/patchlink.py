"""Link a differ output into a running program with the real GNU ld, independent of our loader.

The method: the original program is a non-PIE executable. Every undefined symbol of OUT.o is defined in
a generated linker script as the absolute address it has in that program (plain names from its symbol
table or PLT, `.kpatch.sym.OBJ.NAME,POS` from its local symbols, livepatch numbering), and OUT.o is
linked alone at a fixed far address into `patch.elf`. The LD_PRELOAD shim (patchshim.c) maps
patch.elf's segments at the program's patch point and jumps each old function to its new copy; the
pairs come from patch.elf's `.kpatch.funcs`, whose pointers ld has resolved.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

KPATCH_SYM = ".kpatch.sym."
PATCH_BASE = 0x10000000  # within rel32 range of a non-PIE program at 0x400000, and of 32-bit absolutes
FUNC_ENTRY = struct.Struct("<7Q")
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
                          s["st_info"]["bind"], s["st_shndx"]) for s in tab.iter_symbols()]


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

    def sympos(self, name: str, value: int) -> int:
        """The livepatch position the program's local NAME at VALUE has."""
        found = self._locals(name)
        if len(found) == 1:
            return 0
        return 1 + [s.value for s in found].index(value)

    def address(self, name: str) -> int:
        """Absolute address of an OUT.o undefined symbol in the program."""
        if name.startswith(KPATCH_SYM):
            rest = name[len(KPATCH_SYM):]
            prefix = self.objname + "."
            if not rest.startswith(prefix):
                raise LinkError(f"{name}: not a reference into {self.objname}")
            local_name, _, pos = rest[len(prefix):].rpartition(",")
            if not local_name or not pos.isdigit():
                raise LinkError(f"{name}: malformed local reference")
            return self.local(local_name, int(pos)).value
        defined = [s for s in self.syms if s.name == name and s.bind != "STB_LOCAL" and s.shndx != "SHN_UNDEF"
                   and s.type != "STT_FILE"]
        if defined:
            return defined[0].value
        if name in self.plt:
            return self.plt[name]
        raise LinkError(f"{name}: not defined in {self.program.name} and it has no PLT entry")

    def function(self, name: str, sympos: int) -> ElfSymbol:
        """The program's function NAME at livepatch position SYMPOS (global or local)."""
        glob = [s for s in self.syms if s.name == name and s.type == "STT_FUNC" and s.bind != "STB_LOCAL"
                and s.shndx != "SHN_UNDEF"]
        if glob and sympos == 0:
            return glob[0]
        return self.local(name, sympos)


def undefined_symbols(obj: str | os.PathLike) -> list[str]:
    return sorted({s.name for s in symbols(obj)[1:] if s.shndx == "SHN_UNDEF" and s.name})


def linker_script(obj: str | os.PathLike, program: ProgramSymbols) -> str:
    lines = ["SECTIONS", "{", f"  . = {PATCH_BASE:#x};",
             "  .text : { *(.text .text.*) }",
             "  . = ALIGN(0x1000);",
             "  .rodata : { *(.rodata .rodata.*) }",
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
        lines.append(f'"{quoted}" = {program.address(name):#x};')
    return "\n".join(lines) + "\n"


def link_patch(obj: str | os.PathLike, program: ProgramSymbols, workdir: str | os.PathLike) -> Path:
    """ld OUT.o at PATCH_BASE with every reference defined at its address in the program."""
    workdir = Path(workdir)
    script = workdir / "patch.ld"
    script.write_text(linker_script(obj, program))
    elf = workdir / "patch.elf"
    run = subprocess.run(["ld", "-o", str(elf), "-T", str(script), "-e", "0", "-z", "noexecstack", str(obj)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise LinkError(f"ld failed for {obj}:\n{run.stderr}\nscript:\n{script.read_text()}")
    return elf


def patch_funcs(elf_path: str | os.PathLike) -> list[PatchFunc]:
    """The `.kpatch.funcs` entries of a linked patch.elf, with name pointers followed."""
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        funcs = elf.get_section_by_name(".kpatch.funcs")
        if funcs is None:
            raise LinkError(f"{elf_path}: no .kpatch.funcs output section")
        blob = funcs.data()
        if len(blob) % FUNC_ENTRY.size:
            raise LinkError(f".kpatch.funcs is {len(blob)} bytes, not a multiple of {FUNC_ENTRY.size}")
        segments = [(s.header.sh_addr, s.data()) for s in elf.iter_sections()
                    if s.header.sh_flags & 0x2 and s.header.sh_type != "SHT_NOBITS"]

    def string_at(addr: int) -> str:
        for base, data in segments:
            if base <= addr < base + len(data):
                end = data.index(b"\0", addr - base)
                return data[addr - base:end].decode()
        raise LinkError(f"string pointer {addr:#x} in .kpatch.funcs points nowhere in {elf_path}")

    out = []
    for new_addr, new_size, old_addr, old_size, sympos, name, objname in FUNC_ENTRY.iter_unpack(blob):
        out.append(PatchFunc(new_addr, new_size, old_addr, old_size, sympos, string_at(name), string_at(objname)))
    return out


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


def run_with_patch(program: str | os.PathLike, shim: str | os.PathLike, elf: str | os.PathLike,
                   pairs: list[tuple[int, int]]) -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_PRELOAD=str(shim), PATCHSHIM_ELF=str(elf),
               PATCHSHIM_REDIRECTS=",".join(f"{o:x}:{n:x}" for o, n in pairs))
    return subprocess.run([str(program)], env=env, capture_output=True, text=True, timeout=30)
