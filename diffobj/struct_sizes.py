"""The sizes of the kernel structs that special-section tables are made of (struct alt_instr, jump_entry, ...).

They change between kernel versions, so the differ takes them with each diff: patch-build measures them in
the tree it builds (kbuild.struct_sizes), patch-diff takes `--struct-size STRUCT=BYTES` or kpatch-build's
environment variables (ALT_STRUCT_SIZE=..., as create-diff-object reads them). A table whose size is not
given is bad input, never a guess: a wrong size cuts entries apart silently.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from patch_build.diffobj.arch.x86_64_special import KPATCH_SIZE_VARIABLES
from patch_build.common.errors import InputError

MAX_STRUCT_SIZE = 4096  # no table entry comes near it
_VARIABLE_OF = {struct: var for var, struct in KPATCH_SIZE_VARIABLES.items()}


@dataclass(frozen=True)
class StructSizes:
    sizes: Mapping[str, int] = field(default_factory=dict)  # struct name -> bytes

    def size(self, struct: str, section: str, path: str) -> int:
        if struct in self.sizes:
            return self.sizes[struct]
        raise InputError(f"{path}: {section}: entry size unknown: give the size of struct {struct} for this kernel "
                         f"(patch-diff --struct-size {struct}=BYTES, or {_VARIABLE_OF[struct]}=BYTES in the "
                         "environment as for kpatch's create-diff-object)")


def parse_size(name: str, text: str, what: str) -> tuple[str, int]:
    """(struct, bytes) of one setting: NAME is a struct name or kpatch's variable for it."""
    struct = KPATCH_SIZE_VARIABLES.get(name, name)
    if struct not in _VARIABLE_OF:
        raise InputError(f"{what}: unknown struct {name!r} (known: {', '.join(sorted(_VARIABLE_OF))}, or kpatch's "
                         f"{', '.join(sorted(KPATCH_SIZE_VARIABLES))})")
    if not re.fullmatch(r"\d{1,5}", text.strip()) or not 0 < int(text) <= MAX_STRUCT_SIZE:
        raise InputError(f"{what}: {text!r} is not a size in bytes (1 to {MAX_STRUCT_SIZE})")
    return struct, int(text)


def from_settings(settings: list[str], environ: Mapping[str, str]) -> StructSizes:
    """kpatch's variables found in `environ`, then the STRUCT=BYTES `settings` (which win)."""
    sizes = dict(parse_size(var, environ[var], f"environment variable {var}")
                 for var in sorted(KPATCH_SIZE_VARIABLES) if environ.get(var, "").strip())
    for setting in settings:
        name, eq, value = setting.partition("=")
        if not eq:
            raise InputError(f"--struct-size {setting!r}: expected STRUCT=BYTES")
        struct, size = parse_size(name.strip(), value, f"--struct-size {setting}")
        sizes[struct] = size
    return StructSizes(sizes)
