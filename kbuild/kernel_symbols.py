"""The running kernel's symbols: which exist, in which order (livepatch `sympos`), and which are exported.

Symbol tables come from a System.map, a /proc/kallsyms dump (same format with a `[module]` column; Debian's
packaged System.map is a stub, so a kallsyms dump is what one usually has), a vmlinux with its symbol table,
or a module's .ko. Order matters: the livepatch core numbers same-named local symbols in kallsyms order,
which for vmlinux is address order and for a module its symbol table order.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.diffobj.model import ObjectFile, Symbol
from patch_build.elfcore.constants import SHN_UNDEF, STB_LOCAL, STT_FUNC, STT_NOTYPE, STT_OBJECT
from patch_build.elfcore.symbols import symbols_of
from patch_build.kbuild.kernel_target import find_module_file, uncompressed

_MAP_LINE = re.compile(r"^([0-9a-fA-F]+)\s+(\S)\s+(\S+)(?:\s+\[(\S+)\])?\s*$")
STUB_MARK = "The real System.map is in"


@dataclass
class KSym:
    name: str
    address: int
    local: bool
    function: bool


@dataclass
class SymbolTable:
    """One object's symbols (vmlinux or a module) in kallsyms order."""

    objname: str
    symbols: list[KSym] = field(default_factory=list)
    _by_name: dict[str, list[int]] | None = None

    def named(self, name: str) -> list[int]:
        if self._by_name is None:
            self._by_name = defaultdict(list)
            for i, s in enumerate(self.symbols):
                self._by_name[s.name].append(i)
        return self._by_name.get(name, [])

    def has_function(self, name: str) -> bool:
        return any(self.symbols[i].function for i in self.named(name))

    def defines(self, name: str) -> bool:
        return bool(self.named(name))


def read_system_map(path: Path) -> dict[str, SymbolTable]:
    """{objname: table} from a System.map or a kallsyms dump (module symbols carry `[module]`)."""
    tables: dict[str, SymbolTable] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise InputError(f"System.map {path}: {e.strerror}") from None
    if lines and STUB_MARK in lines[0]:
        raise InputError(f"{path} is Debian's placeholder System.map: give the kernel's symbols with "
                         "--system-map (a copy of its /proc/kallsyms works) or -v VMLINUX")
    for line in lines:
        m = _MAP_LINE.match(line)
        if m is None:
            continue
        addr, kind, name, module = m.groups()
        obj = module or "vmlinux"
        table = tables.setdefault(obj, SymbolTable(obj))
        table.symbols.append(KSym(name, int(addr, 16), kind.islower(), kind in "tTwW"))
    if "vmlinux" not in tables or len(tables["vmlinux"].symbols) < 100:
        raise InputError(f"{path}: not a System.map or kallsyms dump (no kernel symbols found)")
    return tables


def read_elf_symbols(path: Path, objname: str, by_address: bool) -> SymbolTable:
    """A vmlinux (by_address: kallsyms order) or a module .ko (symbol table order)."""
    symtab = symbols_of(path)
    if symtab is None:
        raise InputError(f"{path}: has no symbol table")
    syms = [KSym(s.name, s.value, s.bind == STB_LOCAL, s.type == STT_FUNC) for s in symtab
            if s.name and s.shndx != SHN_UNDEF and s.type in (STT_FUNC, STT_OBJECT, STT_NOTYPE)]
    if by_address:
        syms.sort(key=lambda s: s.address)
    return SymbolTable(objname, syms)


def read_module_symvers(path: Path) -> dict[str, str]:
    """{exported name: exporting object} from Module.symvers."""
    exports = {}
    try:
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                exports[parts[1]] = parts[2].rsplit("/", 1)[-1]
    except OSError as e:
        raise InputError(f"Module.symvers {path}: {e.strerror}") from None
    return exports


class KernelSymbols:
    """The target kernel's symbol tables: vmlinux's (and the modules' a kallsyms dump holds) read at once, each
    other module's from its .ko in the module directories when first asked for."""

    def __init__(self, vmlinux: Path | None, system_map: Path | None, release: str, module_dirs: list[Path],
                 workdir: Path, progress):
        self.module_dirs = module_dirs
        self.workdir = workdir  # where compressed modules are unpacked
        self.progress = progress
        self.tables = self._kernel_tables(vmlinux, system_map, release)

    @staticmethod
    def _kernel_tables(vmlinux: Path | None, system_map: Path | None, release: str) -> dict[str, SymbolTable]:
        if vmlinux is not None:
            return {"vmlinux": read_elf_symbols(vmlinux, "vmlinux", by_address=True)}
        path = system_map or Path("/boot") / f"System.map-{release}"
        if not path.is_file():
            raise InputError(f"no symbol table for {release}: {path} does not exist; give --system-map or -v")
        with open(path, errors="replace") as f:
            stub = STUB_MARK in f.readline()
        if stub and system_map is None and release == os.uname().release:
            path = Path("/proc/kallsyms")  # the running kernel's own table (needs root for addresses)
        return read_system_map(path)

    @property
    def vmlinux(self) -> SymbolTable | None:
        return self.tables.get("vmlinux")

    def table(self, objname: str) -> SymbolTable | None:
        """vmlinux's or a module's table; None (with a warning) for a module whose .ko is not found."""
        if objname in self.tables:
            return self.tables[objname]
        ko = find_module_file(self.module_dirs, objname)
        if ko is None:
            self.progress.note(f"warning: no symbol table for module {objname}: its functions are not checked")
            return None
        self.tables[objname] = read_elf_symbols(uncompressed(ko, self.workdir), objname, by_address=False)
        return self.tables[objname]


def read_exports(headers: Path, ksrc: Path) -> dict[str, str]:
    """{exported name: exporting object} of the headers' Module.symvers, else the tree's."""
    for path in (headers / "Module.symvers", ksrc / "Module.symvers"):
        if path.is_file() and path.stat().st_size:
            return read_module_symvers(path)
    raise InputError(f"no Module.symvers in {ksrc} or {headers}: cannot tell exported symbols")


class Sympos:
    """`DiffOptions.sympos` for one unit: the livepatch position of an original local symbol.

    0 when the name is unique in the target object. Otherwise the unit's copy is told from the others by
    its neighbours: the linker keeps one unit's functions (and its data) together, so the candidate closest
    to the unit's symbols that ARE unique in the table is the unit's.
    """

    def __init__(self, table: SymbolTable | None, unit: ObjectFile):
        self.table = table
        self.unit = unit
        self._anchors: dict[bool, list[int]] = {}

    def _anchor_addresses(self, function: bool) -> list[int]:
        if function not in self._anchors:
            addrs = []
            for s in self.unit.symbols:
                if s.is_defined and s.name and (s.is_function if function else s.is_object):
                    idx = self.table.named(s.name)
                    if len(idx) == 1:
                        addrs.append(self.table.symbols[idx[0]].address)
            self._anchors[function] = sorted(addrs)
        return self._anchors[function]

    def __call__(self, orig: Symbol) -> int:
        if self.table is None:
            return 0
        candidates = [i for i in self.table.named(orig.name) if self.table.symbols[i].local]
        if len(self.table.named(orig.name)) <= 1 or not candidates:
            return 0
        anchors = self._anchor_addresses(orig.is_function) or self._anchor_addresses(not orig.is_function)
        if not anchors:
            return 0  # ambiguous: the livepatch core will refuse, naming the symbol

        def distance(i: int) -> int:
            addr = self.table.symbols[i].address
            return min(abs(addr - a) for a in anchors)

        best = min(candidates, key=distance)
        return self.table.named(orig.name).index(best) + 1
