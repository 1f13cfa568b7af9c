"""Patchability checks: changes the running program cannot take, each named with its reason."""
from __future__ import annotations

from patch_build.diffobj import names
from patch_build.diffobj.compare import extent
from patch_build.diffobj.model import ObjectFile, Status
from patch_build.diffobj.problems import Problems
from patch_build.elfcore import x86_64 as arch

# Kernel sections whose code or data exist only during boot or module load.
INIT_SECTION_PREFIXES = (".init.", ".exit.", ".meminit.", ".head.text", ".ref.text")


def _is_init(name: str) -> bool:
    return name.startswith(INIT_SECTION_PREFIXES)


def check(patched: ObjectFile, kernel: bool, problems: Problems) -> None:
    for sym in patched.symbols:
        if not sym.is_defined or sym.section is None or sym.is_section:
            continue
        sec = sym.section
        if sym.is_function and sym.status is Status.CHANGED and sym.alias_of is None:
            if kernel and _is_init(sec.name):
                problems.add(sym.name, f"changed initialisation-only code ({sec.name}): it ran at boot or "
                                       "load time and cannot be patched")
                continue
            others = [s for s in sec.symbols
                      if s.is_function and s is not sym and s.alias_of is None and s.prefix_of is None]
            if others:
                problems.add(sym.name, f"shares section {sec.name} with {others[0].name}: not compiled with "
                                       "-ffunction-sections (or assembly), cannot be replaced alone")
                continue
            if not kernel and not names.is_cold_piece(sym.name):
                o_lo, o_hi = extent(sym.twin)
                code = sym.twin.section.data[o_lo:o_hi]
                need = arch.min_redirect_size(code)
                if len(code) < need:
                    problems.add(sym.name, f"too small to redirect: {len(code)} bytes, a jump needs {need}")
        elif sym.is_object and sym.status is Status.CHANGED and sym.twin is not None:
            if kernel and _is_init(sec.name):
                problems.add(sym.name, f"changed initialisation-only data ({sec.name})")
            elif sym.size != sym.twin.size:
                problems.add(sym.name, f"size of existing data changed from {sym.twin.size} to {sym.size} bytes: "
                                       "the running program's object keeps its old layout")
            elif not sec.is_readonly_data or not sym.twin.section.is_readonly_data:
                problems.add(sym.name, "initial value of existing data changed: the running program keeps its "
                                       "current value (change it from code instead)")
