"""Link-time optimisation (issue 13): which compiled units of a build were compiled for it.

With -flto an object holds the compiler's intermediate representation (gcc: `.gnu.lto_*` sections, and no
machine code unless -ffat-lto-objects; clang: LLVM bitcode, not even ELF). The machine code the program runs
is made at the link, where functions also move across units (inlining, cloning), so a per-object diff sees
nothing of it, or code the program does not run: such a build is refused with the reason, never reported as
"no functional change" (docs/design.md, exit codes).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from diffobj.errors import InputError, PatchBuildError
from diffobj.inputfile import read_input
from diffobj.read import MAX_OBJECT_SIZE
from kbuild.wrapper import CompiledObject

GCC_IR_PREFIX = ".gnu.lto_"
LLVM_BITCODE_MAGICS = (b"BC\xc0\xde", b"\xde\xc0\x17\x0b")  # raw bitcode, bitcode wrapper
MAX_NAMED = 5  # units named in a one-line message; the rest are counted


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
    try:
        sections = list(ELFFile(io.BytesIO(blob)).iter_sections())
    except ELFError as e:
        raise InputError(f"{path}: not a readable ELF object ({e})") from None
    has_ir = any(s.name.startswith(GCC_IR_PREFIX) for s in sections)
    has_code = any(s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_size"] for s in sections)
    if has_ir:
        return "IR and machine code" if has_code else "IR only"
    return "machine code"


def lto_unit(obj: CompiledObject, source: str, path: Path | None = None) -> LtoUnit | None:
    """The unit as compiled for link-time optimisation (its recorded -flto, or IR in the object at `path`,
    default the recorded object), or None when it was compiled to plain machine code."""
    unit = LtoUnit(source, lto_flag(obj.args), object_contents(path or obj.object))
    return unit if unit.flag or unit.contents != "machine code" else None


def describe(units: list[LtoUnit], total: int) -> str:
    """The step-log line: how many of the `total` compiled units are LTO units, and what their objects hold."""
    flags = sorted({u.flag for u in units if u.flag})
    holds = sorted({u.contents for u in units})
    return (f"LTO build: {len(units)} of {total} compiled unit{'s' if total != 1 else ''} "
            f"{'use' if len(units) != 1 else 'uses'} link-time optimisation"
            + (f" ({', '.join(flags)})" if flags else "")
            + f"; their objects hold {' / '.join(holds)}")


def refusal(units: list[LtoUnit]) -> PatchBuildError:
    """Exit 1, with the reason: the changed units are LTO units, which a per-object diff cannot look into."""
    names = sorted(u.source for u in units)
    shown = ", ".join(names[:MAX_NAMED]) + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")
    ir_only = any(u.contents == "IR only" for u in units)
    why = ("their objects hold compiler IR only, the machine code exists only after the link" if ir_only
           else "the machine code the program runs is made at the link, where code also moves across units")
    return PatchBuildError(f"cannot diff an LTO build per object: the changed unit{'s' if len(names) != 1 else ''} "
                           f"{shown} {'were' if len(names) != 1 else 'was'} compiled with link-time optimisation: "
                           f"{why}; rebuild without -flto (the deployed binary must be built the same way)")

