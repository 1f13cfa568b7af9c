"""Checks of ELF objects with the real binutils (readelf, ld), independent of the code under test."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from patchformat.sections import FUNCS, OFFSET, RECORD, records

_SYMLINE = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+(\d+|0x[0-9a-f]+)\s+(\w+)\s+(\w+)\s+(\w+)\s+(\w+)\s*(\S*)")


@dataclass(frozen=True)
class Sym:
    name: str
    value: int
    size: int
    type: str  # FUNC, OBJECT, NOTYPE, SECTION, FILE, TLS
    bind: str  # LOCAL, GLOBAL, WEAK
    ndx: str  # UND, ABS, COM or a section number

    @property
    def defined(self) -> bool:
        return self.ndx != "UND"


def readelf_symbols(path: str | os.PathLike) -> list[Sym]:
    """The symbol table as the real `readelf -sW` prints it (entry 0 left out)."""
    out = subprocess.run(["readelf", "-sW", str(path)], check=True, capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        m = _SYMLINE.match(line)
        if m and not line.strip().startswith("Num:"):
            value, size, typ, bind, _vis, ndx, name = m.groups()
            syms.append(Sym(name, int(value, 16), int(size, 0), typ, bind, ndx))
    return [s for s in syms if not (s.type == "NOTYPE" and s.ndx == "UND" and not s.name)]


def defined_functions(path: str | os.PathLike) -> set[str]:
    return {s.name for s in readelf_symbols(path) if s.type == "FUNC" and s.defined}


def defined_names(path: str | os.PathLike) -> set[str]:
    return {s.name for s in readelf_symbols(path) if s.defined and s.type not in ("SECTION", "FILE")}


def undefined_names(path: str | os.PathLike) -> set[str]:
    return {s.name for s in readelf_symbols(path) if not s.defined and s.name}


def readelf_problems(path: str | os.PathLike) -> list[str]:
    """Every warning or error `readelf -aW` reports on the file, empty when it is well formed."""
    run = subprocess.run(["readelf", "-aW", str(path)], capture_output=True, text=True)
    lines = [f"exit {run.returncode}"] if run.returncode else []
    lines += [ln for ln in run.stderr.splitlines() if ln.strip()]
    lines += [ln for ln in run.stdout.splitlines() if re.search(r"readelf: (Warning|Error)", ln)]
    return lines


def ld_relocatable_problems(path: str | os.PathLike, workdir: str | os.PathLike) -> list[str]:
    """What `ld -r` says about the object: empty when it links cleanly."""
    out = Path(workdir) / (Path(path).stem + ".ld-r.o")
    run = subprocess.run(["ld", "-r", "-o", str(out), str(path)], capture_output=True, text=True)
    problems = [ln for ln in run.stderr.splitlines() if ln.strip()]
    if run.returncode:
        problems.insert(0, f"ld -r exit {run.returncode}")
    return problems


def section_names(path: str | os.PathLike) -> list[str]:
    return [name for name, _ in section_headers(path)]


def section_headers(path: str | os.PathLike) -> list[tuple[str, int]]:
    """(name, size) of each section."""
    with open(path, "rb") as f:
        return [(s.name, s.header.sh_size) for s in ELFFile(f).iter_sections()]


def comdat_groups(path: str | os.PathLike) -> set[str]:
    """Signature symbols of the COMDAT groups of an object (`readelf -g`)."""
    out = subprocess.run(["readelf", "-gW", str(path)], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"COMDAT group section \[\s*\d+\] `[^']*' \[([^\]]+)\]", out))


@dataclass(frozen=True)
class FuncEntry:
    """One `.kpatch.funcs` entry of an unlinked object, read through its relocations."""

    new_symbol: str
    new_size: int
    old_addr: int
    old_size: int
    sympos: int
    name: str
    objname: str


def kpatch_funcs(path: str | os.PathLike) -> list[FuncEntry]:
    """Decode `.kpatch.funcs` of a relocatable object: values from its bytes, pointers from its RELA."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        funcs = elf.get_section_by_name(FUNCS)
        if funcs is None:
            raise AssertionError(f"{path}: no {FUNCS} section")
        table = records(funcs.data())
        idx = [i for i, s in enumerate(elf.iter_sections()) if s.name == FUNCS][0]
        symtab = elf.get_section_by_name(".symtab")
        sections = list(elf.iter_sections())
        relocs = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.header.sh_info == idx:
                for r in sec.iter_relocations():
                    relocs[r["r_offset"]] = (r["r_info_type"], symtab.get_symbol(r["r_info_sym"]), r["r_addend"])

        def string(offset: int) -> str:
            typ, sym, addend = relocs[offset]
            assert typ == 1, f"pointer at .kpatch.funcs+{offset:#x} is relocation type {typ}, not R_X86_64_64"
            target = sections[sym["st_shndx"]]
            data = target.data()
            start = sym["st_value"] + addend
            return data[start:data.index(b"\0", start)].decode()

        entries = []
        for i, entry in enumerate(table):
            base = i * RECORD.size
            typ, new_sym, addend = relocs[base + OFFSET["new_addr"]]
            assert typ == 1 and addend == 0, f"new_addr of entry {i}: type {typ} addend {addend}"
            new_name = new_sym.name
            if new_sym["st_info"]["type"] == "STT_SECTION":
                new_name = sections[new_sym["st_shndx"]].name
            entries.append(FuncEntry(new_name, entry.new_size, entry.old_addr, entry.old_size, entry.sympos,
                                     string(base + OFFSET["name"]), string(base + OFFSET["objname"])))
        return entries
