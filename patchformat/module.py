"""Read a user-space patch module (`NAME.kpatch`) back into plain data, statically.

The module is an ELF relocatable object; its pointers (`char *name`, `new_addr`, ...) are R_X86_64_64
relocations, so reading it means resolving each relocation to (section, offset) and reading what lies there.
`patch-ctl info` prints a `ModuleInfo`; the loader uses it to know what to patch and which target to expect.
Layouts: docs/design.md (`.kpatch.funcs`, `.kpatch.targets`, `.kpatch.module`, `.kpatch.integrity`).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from patch_build.common.errors import InputError
from patch_build.elfcore.model import ObjectFile, Relocation, Section
from patch_build.elfcore.read import read_object
from patch_build.elfcore.x86_64 import R_X86_64_64
from patch_build.patchformat.integrity import Seal, examine, read_module_bytes
from patch_build.patchformat.sections import (FUNCS, HOOK_ENTRY, HOOK_STAGES, HOOKS_PREFIX, MODULE, MODULE_ENTRY, MODULE_VERSION,
                                  OFFSET, RECORD, STRINGS, TARGET_ENTRY, TARGETS)


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
class Hook:
    stage: str  # pre_apply, post_apply, pre_revert, post_revert
    function: str  # the module's symbol for the hook function


@dataclass
class ModuleInfo:
    path: str
    name: str
    version: int
    targets: list[Target] = field(default_factory=list)
    funcs: list[Func] = field(default_factory=list)  # one per replaced function (identical duplicates merged)
    problems: list[str] = field(default_factory=list)  # why the module is not well-formed; empty when valid
    seal: Seal | None = None  # its integrity record (patchformat.integrity)
    hooks: list[Hook] = field(default_factory=list)  # by stage, in run order

    @property
    def valid(self) -> bool:
        return not self.problems


class _Module:
    """The object (elfcore's model: every relocation, symbol and section bound already checked) with what is
    needed to resolve pointers: the relocation at each offset of each section."""

    def __init__(self, obj: ObjectFile):
        self.obj = obj
        self.relocs: dict[int, dict[int, Relocation]] = {
            sec.index: {rel.offset: rel for rel in sec.relocations} for sec in obj.sections if sec.relocations}

    def section(self, name: str) -> Section | None:
        return self.obj.section_named(name)

    def pointer(self, sec: Section, offset: int) -> Relocation | None:
        """The R_X86_64_64 at `offset` of `sec`, or None."""
        rel = self.relocs.get(sec.index, {}).get(offset)
        return rel if rel is not None and rel.type == R_X86_64_64 else None

    def string(self, sec: Section, offset: int, what: str, problems: list[str]) -> str:
        """The NUL-terminated string a pointer field points to; '' and a problem when it cannot be read."""
        rel = self.pointer(sec, offset)
        if rel is None:
            problems.append(f"{what}: no R_X86_64_64 relocation at {sec.name}+{offset:#x}")
            return ""
        target = rel.symbol.section
        if target is None:
            problems.append(f"{what}: points to undefined symbol {rel.symbol.name!r}")
            return ""
        at = rel.symbol.value + rel.addend
        if target.name != STRINGS:
            problems.append(f"{what}: points into {target.name}, not {STRINGS}")
        data = b"" if target.is_nobits else target.data
        end = data.find(b"\0", at)
        if not 0 <= at < len(data) or end < 0:
            problems.append(f"{what}: string at {target.name}+{at:#x} is out of bounds or not terminated")
            return ""
        return data[at:end].decode("utf-8", "replace")

    def function_symbol(self, sec: Section, offset: int, what: str, problems: list[str],
                        field: str = "new_addr") -> str:
        """The name of the function a pointer field (`new_addr`, a hook) points to (a section symbol + addend
        is resolved)."""
        rel = self.pointer(sec, offset)
        if rel is None:
            problems.append(f"{what}: no R_X86_64_64 relocation for {field}")
            return ""
        sym = rel.symbol
        if sym.is_function and rel.addend == 0:
            return sym.name
        if sym.section is None:
            problems.append(f"{what}: {field} points to undefined symbol {sym.name!r}")
            return sym.name
        at = sym.value + rel.addend
        for cand in sym.section.symbols:
            if cand.is_function and cand.value == at:
                return cand.name
        problems.append(f"{what}: {field} points to no function ({sym.section.name}+{at:#x})")
        return ""


def _entries(mod: _Module, name: str, entry: struct.Struct, problems: list[str], required: bool = True):
    """(section index, offset, fields) for each entry of a metadata section."""
    sec = mod.section(name)
    if sec is None:
        if required:
            problems.append(f"no {name} section")
        return []
    data = b"" if sec.is_nobits else sec.data
    if len(data) % entry.size:
        problems.append(f"{name} is {len(data)} bytes, not a multiple of {entry.size}")
    return [(sec, off, entry.unpack_from(data, off)) for off in range(0, len(data) - entry.size + 1, entry.size)]


def read_module(path: str | os.PathLike, data: bytes | None = None) -> ModuleInfo:
    """Read NAME.kpatch (its bytes `data`, when the caller has read them). Raises InputError when it is not
    a readable x86-64 ELF relocatable object with `.kpatch.funcs` and `.kpatch.integrity` sections; any
    other inconsistency is listed in `ModuleInfo.problems`, a failed integrity check first."""
    return read_module_object(path, data)[0]


def read_module_object(path: str | os.PathLike, data: bytes | None = None) -> tuple[ModuleInfo, ObjectFile]:
    """read_module, and the module as elfcore's model of an object (what the loader maps): one parse."""
    path = os.fspath(path)
    if data is None:
        data = read_module_bytes(path)
    seal = examine(path, data)  # validates the ELF and section headers first
    mod = _open(path, data)
    return _read(path, mod, seal), mod.obj


def read_funcs(path: str | os.PathLike) -> tuple[list[Func], list[str]]:
    """The `.kpatch.funcs` records of any relocatable object that holds them (a differ's output, a module), in
    order, their pointers followed; with the inconsistencies found. InputError as `read_module`."""
    path = os.fspath(path)
    problems: list[str] = []
    return _funcs(_open(path, read_module_bytes(path)), problems), problems


def _open(path: str, data: bytes) -> _Module:
    """The module read through elfcore, which checks every field against the file first (InputError)."""
    mod = _Module(read_object(path, data))
    if mod.section(FUNCS) is None:
        raise InputError(f"{os.path.basename(path)}: not a patch module (no {FUNCS} section)")
    return mod


def _funcs(mod: _Module, problems: list[str]) -> list[Func]:
    funcs = []
    for sec, off, (_, new_size, old_addr, old_size, sympos, _, _) in _entries(mod, FUNCS, RECORD, problems):
        what = f"{FUNCS} entry {len(funcs)}"
        funcs.append(Func(name=mod.string(sec, off + OFFSET["name"], what + " name", problems),
                          objname=mod.string(sec, off + OFFSET["objname"], what + " objname", problems),
                          sympos=sympos, old_size=old_size, new_size=new_size,
                          new_symbol=mod.function_symbol(sec, off + OFFSET["new_addr"], what, problems),
                          old_addr=old_addr))
    return funcs


def _read(path: str, mod: _Module, seal: Seal) -> ModuleInfo:
    problems: list[str] = [seal.problem] if seal.problem else []
    name, version = "", 0
    module_entries = _entries(mod, MODULE, MODULE_ENTRY, problems)
    if len(module_entries) != 1 and module_entries:
        problems.append(f"{MODULE} has {len(module_entries)} entries, expected 1")
    if module_entries:
        sec, off, (_, version) = module_entries[0]
        name = mod.string(sec, off, "module name", problems)
        if version != MODULE_VERSION:
            problems.append(f"module format version {version}, expected {MODULE_VERSION}")

    targets = []
    for sec, off, _ in _entries(mod, TARGETS, TARGET_ENTRY, problems):
        what = f"target {len(targets)}"
        targets.append(Target(mod.string(sec, off, what + " name", problems),
                              mod.string(sec, off + 8, what + " build-id", problems)))
    if not targets:
        problems.append("no target recorded")
    for t in targets:
        if t.build_id and not all(c in "0123456789abcdef" for c in t.build_id):
            problems.append(f"target {t.name}: build-id {t.build_id!r} is not lowercase hex")

    funcs = _funcs(mod, problems)
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
                      seal=seal, hooks=_hooks(mod, problems))


def _hooks(mod: _Module, problems: list[str]) -> list[Hook]:
    """The hook of each stage's `.kpatch.hooks.STAGE` table, stages in run order."""
    stages = {sec.name[len(HOOKS_PREFIX):] for sec in mod.obj.sections if sec.name.startswith(HOOKS_PREFIX)}
    for stage in sorted(stages - set(HOOK_STAGES)):
        problems.append(f"{HOOKS_PREFIX}{stage}: no such hook stage (one of {', '.join(HOOK_STAGES)})")
    hooks = []
    for stage in HOOK_STAGES:
        mine = [Hook(stage, mod.function_symbol(sec, off, f"{sec.name} entry {off // HOOK_ENTRY.size}", problems,
                                                field="the hook"))
                for sec, off, _ in _entries(mod, HOOKS_PREFIX + stage, HOOK_ENTRY, problems, required=False)]
        if len(mine) > 1:  # the compiler does not keep a unit's definitions in source order, nor ld the units'
            problems.append(f"{len(mine)} {stage} hooks ({', '.join(h.function for h in mine)}): one per stage "
                            "(let it call the others in the order they must run)")
        hooks += mine
    return hooks
