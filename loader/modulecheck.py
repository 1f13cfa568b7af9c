"""A patch module's own consistency, checked before anything is mapped or written into a target.

Relocations are instructions to write into memory the loader maps in the target: each must lie inside the
section it applies to, be of a known type and name a symbol that lies inside its own section; a replacement
function must lie inside an executable section and have the size the module's metadata claims. Malformed
modules are bad input (exit 2); unknown relocation types are refused (exit 1), as the loader cannot apply them.
"""
from __future__ import annotations

import os

from diffobj.arch import x86_64 as arch
from diffobj.errors import InputError, Refused
from diffobj.model import BOOKKEEPING_TYPES, SHN_ABS, SHN_UNDEF, SHT_NOBITS, SHT_RELA, ObjectFile, Section, Symbol
from linker.module import ModuleInfo
from loader.layout import loaded_sections

RELA_ENTRY_SIZE = 24


def check_module(path: str, obj: ObjectFile, info: ModuleInfo) -> None:
    """Raise InputError (malformed) or Refused (unsupported) unless every relocation and replacement function
    of the module is consistent."""
    name = os.path.basename(path)
    problems = []
    for sec in obj.sections:
        if sec.type == SHT_RELA and len(sec.data) % RELA_ENTRY_SIZE:
            problems.append(f"relocation section {sec.name} is {len(sec.data)} bytes, not a multiple of "
                            f"{RELA_ENTRY_SIZE}")
    loaded = {s.index for s in loaded_sections(obj)}
    unsupported = []
    for sec in obj.sections:
        if sec.relocations and (sec.type in BOOKKEEPING_TYPES or sec.type == SHT_NOBITS):
            problems.append(f"section {sec.name} (type {sec.type}) has relocations but no contents to relocate")
            continue
        for rel in sec.relocations:
            where = f"relocation at {sec.name}+{rel.offset:#x}"
            size = 1
            if rel.type in arch.RELOC_TYPES:
                size = arch.RELOC_TYPES[rel.type].size
            elif sec.index in loaded:
                unsupported.append((where, f"unsupported relocation type {rel.type}"))
            if not 0 <= rel.offset <= sec.size - size:
                problems.append(f"{where}: outside its section ({sec.size} bytes)")
            why = _symbol_problem(obj, rel.symbol)
            if why:
                problems.append(f"{where}: {why}")
    for func in info.funcs:
        why = _function_problem(obj, func.new_symbol, func.new_size)
        if why:
            problems.append(f"replacement for {func.name}: {why}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{name}: malformed patch module: {problems[0]}{more}")
    if unsupported:
        raise Refused(unsupported[:1])


def _symbol_problem(obj: ObjectFile, sym: Symbol) -> str | None:
    """Why a relocation's symbol cannot be trusted to designate what it names, or None."""
    if sym.shndx in (SHN_UNDEF, SHN_ABS):
        return None
    sec = sym.section
    if sec is None:
        return f"symbol {sym.name!r} has section index {sym.shndx:#x}, which the loader cannot place"
    return _extent_problem(sym, sec)


def _extent_problem(sym: Symbol, sec: Section) -> str | None:
    if sec.type in BOOKKEEPING_TYPES:
        return f"symbol {sym.display!r} is defined in {sec.name}, which holds no code or data"
    if sym.is_section:
        return None
    if not 0 <= sym.value <= sym.value + sym.size <= sec.size:
        return f"symbol {sym.name!r} ({sym.value:#x}, {sym.size} bytes) lies outside its section {sec.name}"
    return None


def _function_problem(obj: ObjectFile, name: str, size: int) -> str | None:
    """Why the module's function `name` cannot be what a redirect jumps to, or None. It is the first defined
    function of that name, as the loader's layout picks it."""
    sym = next((s for s in obj.symbols if s.name == name and s.is_function and s.is_defined), None)
    if sym is None or sym.section is None:
        return f"the module defines no function {name!r}"
    why = _extent_problem(sym, sym.section)
    if why:
        return why
    if not sym.section.is_text:
        return f"function {name!r} is in {sym.section.name}, which is not executable"
    if sym.size != size or not size:
        return f"function {name!r} is {sym.size} bytes, the module's metadata says {size}"
    return None
