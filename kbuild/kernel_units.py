"""The compilation units a kernel patch touches: which (a patched .c, the .c files that include a patched file),
built original and patched in the tree, and the object each is linked into (vmlinux or a module).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from patch_build.common.errors import InputError, NoChange, Refused
from patch_build.diffobj.diff import DiffResult
from patch_build.kbuild.kernel_tree import KernelTree
from patch_build.kbuild.tree import is_build_file
from patch_build.report.patches import touched_files

SOURCE_SUFFIXES = (".c",)
ASSEMBLY_SUFFIXES = (".S", ".s")
HEADER_SUFFIXES = (".h",)


@dataclass
class Unit:
    source: str  # relative to KSRC
    obj: str  # the object kbuild builds from it, relative to KSRC
    target: str = ""  # vmlinux or the module's name, read from kbuild's command line
    orig: Path | None = None
    patched: Path | None = None
    output: Path | None = None
    diff: DiffResult | None = None
    optional: bool = False  # found through an included file: may not be part of this configuration
    left_out: list[dict] = field(default_factory=list)  # --only-explained: the differ's entries of those left out
    causes: dict[str, str] = field(default_factory=dict)  # left-out function -> its likely cause


def touched_units(patches: list[Path], ksrc: Path, progress) -> list[Unit]:
    """The units the patches change, by source path; Refused for a file that cannot be live-patched."""
    sources: list[str] = []
    optional: set[str] = set()
    problems = []
    for patch in patches:
        for path in touched_files(patch):
            if is_build_file(path):
                problems.append((path, "build file: changes to the build system cannot be live-patched"))
            elif path.endswith(ASSEMBLY_SUFFIXES):
                problems.append((path, "assembly source: changes to assembly cannot be live-patched"))
            elif path.endswith(HEADER_SUFFIXES):
                found = _includers(ksrc, path)
                if not found:
                    progress.note(f"warning: no unit includes {path} directly; nothing rebuilt for it")
                optional.update(found)
            elif path.endswith(SOURCE_SUFFIXES):
                # A .c file another one includes (kernel/sched/build_utility.c) is built through it.
                sources += _includers(ksrc, path) or [path]
            else:
                problems.append((path, "not a C source or header: only code changes can be live-patched"))
    if problems:
        raise Refused(problems)
    direct = set(sources)
    sources = sorted(direct | optional)
    if not sources:
        raise NoChange("the patches change no compilation unit")
    return [Unit(s, s[:-2] + ".o", optional=s not in direct) for s in sources]


def _includers(ksrc: Path, path: str) -> list[str]:
    """The .c files that include `path` directly, as the tree names it (<linux/x.h>, or "x.h" nearby)."""
    m = re.match(r"(?:arch/[^/]+/)?include/(?:uapi/)?(.+)$", path)
    if m:
        pattern, where = m.group(1), "."
    else:
        pattern, where = os.path.basename(path), os.path.dirname(path) or "."
    regex = r'^\s*#\s*include\s*[<"]' + pattern.replace(".", r"\.") + r'[>"]'
    proc = subprocess.run(["grep", "-rlE", "--include=*.c", regex, where], cwd=ksrc, capture_output=True, text=True)
    return [os.path.normpath(p) for p in proc.stdout.split() if os.path.normpath(p) != path]


def compile_units(tree: KernelTree, units: list[Unit], what: str) -> None:
    """Build the units' objects in the tree; those only found through a header that this configuration does
    not build are dropped from `units`."""
    dropped = tree.compile({u.obj: u.optional for u in units}, what)
    units[:] = [u for u in units if u.obj not in dropped]
    if not units:
        raise NoChange("the patches change no unit this configuration builds")


def collect(units: list[Unit], what: str, ksrc: Path, scratch: Path) -> None:
    """Copy each unit's object out of the tree to SCRATCH/WHAT (`what`: orig or patched), before the next build."""
    outdir = scratch / what
    outdir.mkdir(exist_ok=True)
    for i, u in enumerate(units):
        built = ksrc / u.obj
        if not built.is_file():
            raise InputError(f"kbuild did not build {u.obj} (not part of this configuration?)")
        dest = outdir / f"{i:04d}-{built.name}"
        shutil.copy2(built, dest)
        setattr(u, what, dest)


def assign_targets(tree: KernelTree, units: list[Unit], wanted: list[str], progress) -> None:
    """vmlinux or the module each unit is linked into, from kbuild's recorded command line; with `wanted`
    (-t), the units of other objects are left out."""
    for u in units:
        line = tree.recorded_line(u.obj)
        modname = re.search(r"-DKBUILD_MODNAME='\"([^\"]+)\"'", line)
        u.target = modname.group(1) if " -DMODULE " in f"{line} " and modname else "vmlinux"
    if wanted:
        names = {t.replace("-", "_") for t in wanted}
        for u in units:
            if u.target not in names:
                progress.note(f"warning: {u.source} belongs to {u.target}, not a -t target; skipped")
        units[:] = [u for u in units if u.target in names]
        if not units:
            raise NoChange(f"the patches change nothing in {', '.join(wanted)}")
