"""Link-time optimisation (issue 13): which compiled units of a build were compiled for it, and link-diff.

With -flto an object holds the compiler's intermediate representation (gcc: `.gnu.lto_*` sections, and no
machine code unless -ffat-lto-objects; clang: LLVM bitcode, not even ELF). The machine code the program runs
is made at the link, where functions also move across units (inlining, cloning), so a per-object diff sees
nothing of it, or code the program does not run.

Link-diff diffs the linked programs instead: the wrapper links every program with -Wl,--emit-relocs, so
`diffobj.linked` can read the original and the patched link as object-shaped models, which the differ's passes
take unchanged; the result is checked against the deployed binary like a per-object diff's. An LTO build is
always diffed so; --link-diff chooses it for any build (it also sees a change inlined across units).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from patch_build.common.errors import InputError, PatchBuildError
from patch_build.common.inputfile import read_input
from patch_build.diffobj.diff import DiffOptions, diff_models
from patch_build.diffobj.linked import read_linked
from patch_build.diffobj.model import ObjectFile, Symbol
from patch_build.elfcore.constants import SHF_EXECINSTR
from patch_build.elfcore.headers import check_header, section_names
from patch_build.elfcore.read import MAX_OBJECT_SIZE
from patch_build.kbuild.deployed import BinarySymbol, DeployedBinary, UnitSymbols
from patch_build.kbuild.units import UnitDiff, checked_diff, diff_explained
from patch_build.report.explain import UnitSources
from patch_build.kbuild.wrapper import CompiledObject

GCC_IR_PREFIX = ".gnu.lto_"
LLVM_BITCODE_MAGICS = (b"BC\xc0\xde", b"\xde\xc0\x17\x0b")  # raw bitcode, bitcode wrapper


@dataclass(frozen=True)
class LtoUnit:
    source: str  # relative to the tree, for messages
    flag: str | None  # the -flto... argument that is in effect, when the compile had one
    contents: str  # "IR only", "IR and machine code" or "machine code"


def lto_flag(args: list[str]) -> str | None:
    """The -flto / -flto=N / -flto=auto argument in effect in a recorded compile (gcc: the last of -flto*
    and -fno-lto wins), or None."""
    flag = None
    for arg in args:
        if arg == "-flto" or arg.startswith("-flto="):
            flag = arg
        elif arg == "-fno-lto":
            flag = None
    return flag


def object_contents(path: Path) -> str:
    """What a compiled object holds: "IR only" (gcc slim LTO objects, LLVM bitcode), "IR and machine code"
    (-ffat-lto-objects) or "machine code"."""
    blob = read_input(path, "object file", MAX_OBJECT_SIZE)
    if blob[:4] in LLVM_BITCODE_MAGICS:
        return "IR only"
    headers = check_header(os.fspath(path), blob)
    has_ir = any(name.startswith(GCC_IR_PREFIX) for name in section_names(os.fspath(path), blob, headers))
    has_code = any(h.flags & SHF_EXECINSTR and h.size for h in headers)
    if has_ir:
        return "IR and machine code" if has_code else "IR only"
    return "machine code"


def lto_unit(obj: CompiledObject, source: str) -> LtoUnit | None:
    """The unit as compiled for link-time optimisation (its recorded -flto, or IR in its object), or None
    when it was compiled to plain machine code."""
    unit = LtoUnit(source, lto_flag(obj.args), object_contents(obj.object))
    return unit if unit.flag or unit.contents != "machine code" else None


def describe(units: list[LtoUnit], total: int) -> str:
    """The step-log line: how many of the `total` compiled units are LTO units, and what their objects hold."""
    flags = sorted({u.flag for u in units if u.flag})
    holds = sorted({u.contents for u in units})
    return (f"LTO build: {len(units)} of {total} compiled unit{'s' if total != 1 else ''} "
            f"{'use' if len(units) != 1 else 'uses'} link-time optimisation"
            + (f" ({', '.join(flags)})" if flags else "")
            + f"; their objects hold {' / '.join(holds)}")


class LinkedSymbols(UnitSymbols):
    """Where the symbols of the original link are in the deployed binary, and their sympos (the differ's
    `sympos` callable, `mismatches`' `where`): UnitSymbols, with a link's symbols for a unit's. The deployed binary is the same link without --emit-relocs, so
    same-named locals (LTO's `.lto_priv.N` clones, statics of several units) come in the same symtab order."""

    def __init__(self, binary: DeployedBinary, linked: ObjectFile):
        self.binary = binary
        self._rank: dict[Symbol, int] = {}
        seen: dict[str, int] = {}
        for sym in linked.symbols:
            if sym.is_local and sym.is_defined and sym.name and not sym.is_section:
                self._rank[sym] = seen.get(sym.name, 0)
                seen[sym.name] = self._rank[sym] + 1

    def find(self, sym: Symbol) -> BinarySymbol | None:
        if not sym.is_local:
            return self.binary.global_named(sym.name)
        same, rank = self.binary.locals_named(sym.name), self._rank.get(sym)
        return same[rank] if rank is not None and rank < len(same) else None

    def __call__(self, sym: Symbol) -> int:
        same = self.binary.locals_named(sym.name)
        mine = self.find(sym) if len(same) > 1 else None
        return 0 if mine is None else 1 + same.index(mine)


def diff_linked(target: str, orig: Path, patched: Path, binary: DeployedBinary, output: Path,
                only_explained: UnitSources | None = None) -> UnitDiff:
    """Link-diff of one TARGET: its original and patched links (both with --emit-relocs), the changed
    functions checked against the deployed binary, the patch object written to `output` when it may be used.
    A link without relocations (the build linked it without the wrapper) is refused with the reason.
    `only_explained`: leave out the changed functions no hunk explains (with LTO, a change can move the
    compiler's whole-program decisions, inlining among them, in code the patch does not touch)."""

    def diff(leave_out: frozenset[str]):
        try:  # read anew for each pass: the differ marks up the models it diffs
            orig_model, patched_model = read_linked(os.fspath(orig)), read_linked(os.fspath(patched))
        except InputError as e:
            raise PatchBuildError(f"cannot diff {target} at the link: {e}") from None
        where = LinkedSymbols(binary, orig_model)
        options = DiffOptions(kernel=False, objname=binary.name, sympos=where, deployed_size=where.size,
                              leave_out=leave_out)
        return diff_models(orig_model, patched_model, options), where

    result, where, left_out, causes = diff_explained(diff, only_explained)
    return checked_diff(target, target, binary, result, where, output, left_out, causes)
