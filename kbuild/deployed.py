"""The deployed target binary: its identity, where a unit's symbols are in it, and whether the functions a
patch replaces are the ones it runs.

The binary need not be built with -ffunction-sections: functions are found through its .symtab. Local symbols
are told apart livepatch-style (sympos) using the STT_FILE blocks the linker keeps in symtab order.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.diffobj.model import ObjectFile, Symbol
from patch_build.diffobj.targets import TargetResolver
from patch_build.elfcore.binary import LinkedBinary, read_binary
from patch_build.elfcore.constants import ET_DYN, ET_EXEC, STB_GLOBAL, STB_LOCAL, STT_FILE, STT_FUNC
from patch_build.kbuild.samecode import deployed_offset, difference


@dataclass
class BinarySymbol:
    index: int  # position in .symtab
    name: str
    is_function: bool
    is_local: bool
    value: int
    size: int
    file: str  # name of the STT_FILE a local follows ('' for globals)
    block: int  # which STT_FILE block (-1 for globals)


@dataclass
class DeployedBinary:
    path: Path
    build_id: str
    symbols: list[BinarySymbol]
    files: set[str]  # names of its STT_FILE symbols: the units linked into it
    _binary: LinkedBinary = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def __post_init__(self) -> None:
        self._locals: dict[str, list[BinarySymbol]] = {}
        self._globals: dict[str, BinarySymbol] = {}
        for s in self.symbols:
            if s.is_local:
                self._locals.setdefault(s.name, []).append(s)
            elif s.value:
                self._globals.setdefault(s.name, s)
        self._functions = sorted((s for s in self.symbols if s.is_function and s.value), key=lambda s: s.value)
        self._starts = [s.value for s in self._functions]
        self._names_at: dict[int, set[str]] = {}
        for s in self._functions:
            self._names_at.setdefault(s.value, set()).add(s.name)

    def links(self, obj: ObjectFile) -> bool:
        """Whether the unit `obj` is linked into this binary: the binary has an STT_FILE of the unit's name and,
        when the unit defines strong globals, has them too (weak ones, C++ inline functions and templates, are
        shared by every unit that includes their header)."""
        if unit_file(obj) not in self.files:
            return False
        strong = {s.name for s in obj.symbols
                  if s.bind == STB_GLOBAL and s.is_defined and (s.is_function or s.is_object)}
        return not strong or any(self.global_named(name) is not None for name in strong)

    def locals_named(self, name: str) -> list[BinarySymbol]:
        return self._locals.get(name, [])

    def global_named(self, name: str) -> BinarySymbol | None:
        """A defined global (or weak) symbol of the binary."""
        return self._globals.get(name)

    def read(self, address: int, size: int) -> bytes:
        return self._binary.read(address, size)

    def symbol_at(self, address: int) -> tuple[str, int] | None:
        """(function name, offset) of the function covering `address`."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            f = self._functions[i]
            if f.value <= address < f.value + max(f.size, 1):
                return f.name, address - f.value
        return None

    def names(self, address: int) -> set[str]:
        """The names of the functions starting at `address`: aliases (C++ complete and base constructors, ...)
        share one."""
        return self._names_at.get(address, set())

    def section_name(self, address: int) -> str:
        return self._binary.section_name(address)


def load_binary(path: Path) -> DeployedBinary:
    """Parse the deployed executable or shared library; InputError when it cannot serve as a target. A symlink
    (libfoo.so -> libfoo.so.1) is followed: the running process maps, and the module names, the file itself."""
    path = path.resolve()
    if not path.is_file():
        raise InputError(f"{path}: not a readable ELF file")
    binary = read_binary(path)
    if binary.e_type not in (ET_EXEC, ET_DYN):
        raise InputError(f"{path.name}: not an executable or shared library")
    if not binary.build_id:
        raise InputError(f"{path.name}: has no GNU build-id note (link with -Wl,--build-id)")
    symbols, files, current_file, block = [], set(), "", 0
    for i, sym in enumerate(binary.symtab):
        if sym.type == STT_FILE:
            current_file, block = sym.name, block + 1
            files.add(sym.name)
            continue
        local = sym.bind == STB_LOCAL
        symbols.append(BinarySymbol(i, sym.name, sym.type == STT_FUNC, local, sym.value, sym.size,
                                    current_file if local else "", block if local else -1))
    if not symbols:
        raise InputError(f"{path.name}: is stripped (no .symtab); give the unstripped binary with --target-binary")
    return DeployedBinary(path=path, build_id=binary.build_id, symbols=symbols, files=files, _binary=binary)


def unit_file(obj: ObjectFile) -> str:
    """The name of the unit's STT_FILE symbol (the source basename the compiler recorded)."""
    return next((s.name for s in obj.symbols if s.type == STT_FILE and s.name), "")


class UnitSymbols:
    """Where one compilation unit's symbols are in the deployed binary; also the differ's `sympos` callable."""

    def __init__(self, binary: DeployedBinary, obj: ObjectFile):
        self.binary = binary
        self.file = unit_file(obj)
        self.local_names = {s.name for s in obj.symbols if s.is_local and s.name and (s.is_function or s.is_object)}

    def _candidates(self, name: str) -> list[BinarySymbol]:
        """Same-named locals in this unit's STT_FILE block; when several blocks carry the unit's file name
        (same basename in two directories), the block sharing the most local names with the unit."""
        same_file = [s for s in self.binary.locals_named(name) if s.file == self.file]
        blocks = {s.block for s in same_file}
        if len(blocks) > 1:
            names: dict[int, set[str]] = {b: set() for b in blocks}
            for s in self.binary.symbols:
                if s.block in names:
                    names[s.block].add(s.name)
            best = max(sorted(blocks), key=lambda b: len(names[b] & self.local_names))
            same_file = [s for s in same_file if s.block == best]
        return same_file

    def find(self, sym: Symbol) -> BinarySymbol | None:
        if not sym.is_local:
            return self.binary.global_named(sym.name)
        found = self._candidates(sym.name)
        return found[0] if found else None

    def size(self, sym: Symbol) -> int | None:
        """The size of the unit's symbol in the binary, when found."""
        found = self.find(sym)
        return found.size if found is not None else None

    def __call__(self, sym: Symbol) -> int:
        """livepatch's sympos: 0 when the name is unique among the binary's locals, else the 1-based position
        of this unit's symbol among them in symtab order."""
        same = self.binary.locals_named(sym.name)
        if len(same) <= 1:
            return 0
        mine = self.find(sym)
        if mine is None:
            return 0
        return 1 + [s.index for s in same].index(mine.index)


def _callees(sym: Symbol, resolver: TargetResolver) -> list[Symbol]:
    """The functions of the object `sym` calls, jumps to or takes the address of, in relocation order."""
    out = []
    for rel in sym.section.relocations:
        if sym.value <= rel.offset < sym.value + sym.size:
            t = resolver.resolve(sym.section, rel)
            if t.symbol is not None and t.symbol.is_function and t.section is not None and t.symbol not in out:
                out.append(t.symbol)
    return out


def _table_entries(sym: Symbol, resolver: TargetResolver) -> list[tuple[Symbol, int]]:
    """(function, offset) of each entry of the jump tables `sym` uses that points outside `sym` and its pieces:
    the patch reaches those in the running program, at the same offset."""
    own = {sym, *sym.children}
    out = []
    for rel in sym.section.relocations:
        if not sym.value <= rel.offset < sym.value + sym.size:
            continue
        t = resolver.resolve(sym.section, rel)
        if t.symbol is not None or t.section is None or not t.section.is_readonly_data:
            continue  # not anonymous read-only data: no table
        end = resolver.item_end(t.section, t.offset)
        for entry in t.section.relocations:
            if t.offset <= entry.offset < end:
                e = resolver.resolve(t.section, entry)
                if e.symbol is not None and e.symbol.is_function and e.section is not None and e.symbol not in own \
                        and (e.symbol, e.offset) not in out:
                    out.append((e.symbol, e.offset))
    return out


def mismatches(obj: ObjectFile, names: list[str], where: UnitSymbols) -> list[str]:
    """Of the original object's functions `names`, and of the unit's functions they use (directly or not),
    those the deployed binary does not run, each with why. The patch calls the deployed copies of those
    it uses, and was built from what the scratch ones do: both must be the same code, using the same data."""
    resolver = TargetResolver(obj)
    functions = {s.name: s for s in obj.symbols if s.is_function and s.section is not None}
    # A name that is not a function of the original unit has nothing deployed to compare.
    work: list[tuple[Symbol, str | None]] = [(functions[n], None) for n in names if n in functions]
    problems, seen = [], set()
    while work:
        sym, user = work.pop(0)
        if sym in seen:
            continue
        seen.add(sym)
        deployed = where.find(sym)
        why = (f"not in {where.binary.name}" if deployed is None
               else difference(sym, deployed.value, deployed.size, where.binary, resolver))
        if why:
            problems.append(f"{sym.name} ({why})" if user is None else f"{sym.name} (used by {user}: {why})")
        if deployed is not None:
            work += [(callee, user or sym.name) for callee in _callees(sym, resolver)]
            for target, offset in _table_entries(sym, resolver):
                work.append((target, user or sym.name))
                found = where.find(target)
                at = None if found is None else deployed_offset(target, offset, found.value, found.size, where.binary)
                if found is not None and at != offset:
                    deployed_at = "no instruction" if at is None else f"+{at:#x}"
                    problems.append(f"{target.name} (a jump table of {sym.name} points at +{offset:#x}, which is "
                                    f"{deployed_at} in {where.binary.name})")
    return problems
