"""A patch module as the loader takes it: read once (bounded), its digest and any signature checked, parsed
once into diffobj's model, and checked for what the loader must act on before anything reaches a target.

The reader (`elfcore.read`) already holds every relocation to its section's bounds, its symbol index and a
known type, and every symbol to its section's bounds. Here: relocations only patch sections with contents,
their symbols lie in sections with code or data (or are absolute or undefined: resolved in the target), and
each replacement function lies in an executable section with the size the module's metadata claims.
Malformed modules are bad input (exit 2); common symbols are refused (exit 1): the loader cannot place them.
"""
from __future__ import annotations

import os

from patch_build.common.errors import InputError, Refused
from patch_build.elfcore.constants import BOOKKEEPING_TYPES, SHN_ABS, SHN_UNDEF, SHT_NOBITS
from patch_build.elfcore.model import ObjectFile, Symbol
from patch_build.patchformat.integrity import check_trusted, read_module_bytes
from patch_build.patchformat.module import ModuleInfo, read_module, read_module_object


def module_info(path: str) -> ModuleInfo:
    """The module's metadata; its ELF headers are validated and its digest checked first (a mismatch is
    the first of its problems), so that nothing trusts the offsets of a corrupt file."""
    return read_module(path)


def load_module(path: str, trusted: dict | None = None) -> tuple[ModuleInfo, ObjectFile]:
    """The module's metadata and contents, from one read and one parse of the file: InputError when it is
    not a well-formed patch module (digest included); Refused when `trusted` keys (patchformat.integrity) are
    given and none of them signed it, or when the loader cannot apply its relocations."""
    info, obj = read_module_object(path, read_module_bytes(path))
    if info.problems:
        raise InputError(f"{os.path.basename(path)}: malformed patch module: {info.problems[0]}")
    if trusted is not None:
        check_trusted(info.name, info.seal, trusted)
    check_module(path, obj, info)
    return info, obj


def check_module(path: str, obj: ObjectFile, info: ModuleInfo) -> None:
    """Raise InputError (malformed) or Refused (unsupported) unless the module's relocations and replacement
    functions are what the loader can act on."""
    problems, unsupported = [], []
    for sec in obj.sections:
        if sec.relocations and (sec.type in BOOKKEEPING_TYPES or sec.type == SHT_NOBITS):
            problems.append(f"section {sec.name} (type {sec.type}) has relocations but no contents to relocate")
            continue
        for rel in sec.relocations:
            sym = rel.symbol
            if sym.shndx in (SHN_UNDEF, SHN_ABS):
                continue
            where = f"relocation at {sec.name}+{rel.offset:#x}"
            if sym.section is None:
                unsupported.append((sym.name, f"{where}: a common symbol (section index {sym.shndx:#x}) is not "
                                              "supported in a patch; compile with -fno-common"))
            elif sym.section.type in BOOKKEEPING_TYPES:
                problems.append(f"{where}: symbol {sym.display!r} is defined in {sym.section.name}, which holds "
                                "no code or data")
    for func in info.funcs:
        why = _function_problem(obj, func.new_symbol, func.new_size)
        if why:
            problems.append(f"replacement for {func.name}: {why}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{os.path.basename(path)}: malformed patch module: {problems[0]}{more}")
    if unsupported:
        raise Refused(unsupported[:1])


def _function_problem(obj: ObjectFile, name: str, size: int) -> str | None:
    """Why the module's function `name` cannot be what a redirect jumps to, or None. It is the first defined
    function of that name, as the loader's layout picks it."""
    sym: Symbol | None = next((s for s in obj.symbols if s.name == name and s.is_function and s.is_defined), None)
    if sym is None or sym.section is None:
        return f"the module defines no function {name!r}"
    if not sym.section.is_text:
        return f"function {name!r} is in {sym.section.name}, which is not executable"
    if sym.size != size or not size:
        return f"function {name!r} is {sym.size} bytes, the module's metadata says {size}"
    return None
