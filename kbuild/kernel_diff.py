"""Diffing the kernel units in kernel mode against the running kernel's symbols, and refusing now what the
livepatch core would refuse at load time (a klp symbol that names no single symbol, a module's jump-label or
static-call key, two callbacks of one stage for one object).
"""
from __future__ import annotations

import os
from pathlib import Path

from patch_build.diffobj.diff import DiffOptions, diff_objects
from patch_build.diffobj.kpatch_marks import CALLBACK_ENTRY_SIZE, CALLBACKS_PREFIX
from patch_build.diffobj.model import ObjectFile, OutputObject, OutSection
from patch_build.diffobj.problems import Problem
from patch_build.diffobj.read import read_object
from patch_build.diffobj.struct_sizes import StructSizes
from patch_build.kbuild.kernel_symbols import KernelSymbols, Sympos
from patch_build.kbuild.kernel_units import Unit
from patch_build.patchformat.names import parse_reference
from patch_build.report.explain import UnitSources, left_out_note, unexplained_changes
from patch_build.report.patches import line_shifts, read_hunks

KEYED_SECTIONS = {"__jump_table": "jump label", ".static_call_sites": "static call"}


def new_globals(originals: list[ObjectFile], patched: list[ObjectFile]) -> set[str]:
    """Global names the patched units define and the original ones do not: the patch's new functions and
    data, which its other units must reach inside the module (the running kernel has no such symbol)."""
    def defined(objects: list[ObjectFile]) -> set[str]:
        return {s.name for o in objects for s in o.symbols if s.is_defined and not s.is_local and not s.is_section}

    return defined(patched) - defined(originals)


def callback_tables(output: OutputObject | None) -> list[OutSection]:
    """The livepatch callback tables (kpatch-macros.h) a diff output carries."""
    return [s for s in output.sections if s.name.startswith(CALLBACKS_PREFIX)] if output is not None else []


def diff_units(units: list[Unit], symbols: KernelSymbols, exports: dict[str, str], sizes: StructSizes,
               patches: list[Path], only_explained: bool, ksrc: Path, outdir: Path, progress) -> None:
    """Diff each unit (its `diff`; `output` written when it has changes and no errors), with --only-explained
    (`only_explained`) the changed functions no hunk of the patches explains left out."""
    outdir.mkdir(exist_ok=True)
    originals = [read_object(os.fspath(u.orig)) for u in units]
    provided = new_globals(originals, [read_object(os.fspath(u.patched)) for u in units])
    hunks = read_hunks(patches) if only_explained else []
    shifts = line_shifts(patches)
    vmlinux = symbols.vmlinux
    for i, u in enumerate(units):
        table = symbols.table(u.target)
        # A module's own exports are reached through klp relocations too: the patch must load without it.
        exported = {n for n, owner in exports.items() if owner != u.target or owner == "vmlinux"}

        def extern_objname(name: str, target=u.target, table=table) -> str:
            if target != "vmlinux" and (table is None or not table.defines(name)) \
                    and vmlinux is not None and vmlinux.defines(name):
                return "vmlinux"
            return target

        options = DiffOptions(kernel=True, objname=u.target, exported=exported,
                              sympos=Sympos(table, originals[i]), extern_objname=extern_objname, provided=provided,
                              line_shifts=shifts, struct_sizes=sizes)
        u.diff = diff_objects(os.fspath(u.orig), os.fspath(u.patched), options)
        if hunks:
            # The tree has its original sources back: macro and type names are read from those.
            u.left_out, u.causes = unexplained_changes(u.diff, UnitSources(hunks, ksrc, u.source))
            if u.left_out:
                options.leave_out = frozenset(u.causes)
                u.diff = diff_objects(os.fspath(u.orig), os.fspath(u.patched), options)
            for name, cause in u.causes.items():
                progress.note(left_out_note(u.source, name, cause))
        if table is not None:
            for ch in u.diff.changed_functions:
                if not table.has_function(ch.old_name):
                    u.diff.errors.append(Problem(ch.old_name, f"not a function of the running {u.target} "
                                                               "(inlined or renamed there?): cannot redirect it"))
        if u.diff.output is not None:
            u.diff.errors += _check_klp_symbols(u.diff.output, symbols)
        if u.diff.has_changes and not u.diff.errors:
            u.output = outdir / f"{i:04d}-{os.path.basename(u.obj)}"
            u.diff.write(os.fspath(u.output))
        progress.advance(u.source)
    _check_callbacks(units)


def _check_callbacks(units: list[Unit]) -> None:
    """The livepatch core calls one callback per object and stage: refuse more now rather than at load."""
    sources: dict[tuple[str, str], list[Unit]] = {}
    for u in units:
        for sec in callback_tables(u.diff.output):
            key = (u.target, sec.name[len(CALLBACKS_PREFIX):])
            sources.setdefault(key, []).extend([u] * (len(sec.data) // CALLBACK_ENTRY_SIZE))
    for (target, stage), found in sorted(sources.items()):
        if len(found) > 1:
            names = ", ".join(sorted({u.source for u in found}))
            found[-1].diff.errors.append(Problem(f"{CALLBACKS_PREFIX}{stage}", (
                f"{len(found)} {stage} callbacks for {target} ({names}): the livepatch core calls one per "
                "object and stage")))


def _check_klp_symbols(output: OutputObject, symbols: KernelSymbols) -> list[Problem]:
    """Each `.klp.sym.OBJ.NAME,POS` must name exactly one symbol of the running OBJ, or the livepatch core
    refuses the module at load time: say so now, with the reason."""
    problems = []
    for sym in output.symbols:
        ref = parse_reference(sym.name, kernel=True)
        if ref is None:
            continue
        objname, name, pos = ref.objname, ref.name, ref.pos
        table = symbols.table(objname)
        if table is None:
            continue
        count = len(table.named(name))
        if count == 0:
            problems.append(Problem(name, f"used by the patch but not a symbol of the running {objname} "
                                          "(inlined or optimised away there?)"))
        elif pos > count or (pos == 0 and count > 1):
            problems.append(Problem(name, f"{count} symbols of the running {objname} have this name and the "
                                          f"reference cannot tell which (position {pos})"))
    # The loader sets up a module's jump labels and static calls before the livepatch core resolves
    # relocations against other modules: such a key would still be unresolved (kpatch refuses them too).
    for sec in output.sections:
        if sec.name not in KEYED_SECTIONS:
            continue
        for rel in sec.relocations:
            ref = parse_reference(rel.symbol.name, kernel=True)
            if ref and ref.objname != "vmlinux":
                problems.append(Problem(ref.name, f"a {KEYED_SECTIONS[sec.name]} key of module {ref.objname}, "
                                                    "which a livepatch cannot use (use static_key_enabled() or "
                                                    "a plain call instead)"))
    return problems
