"""Checks of ELF objects with the real binutils (readelf, ld), independent of the code under test; the
`.kpatch.funcs` records are decoded by the patch formats' own reader (patchformat.module), their contract."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from patch_build.patchformat.module import Func, read_funcs

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


def kpatch_funcs(path: str | os.PathLike) -> list[Func]:
    """`.kpatch.funcs` of a relocatable object, decoded by the contract module (values from its bytes,
    pointers through its relocations); a problem it finds fails the test."""
    funcs, problems = read_funcs(path)
    assert not problems, f"{path}: {problems}"
    return funcs
