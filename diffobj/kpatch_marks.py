"""kpatch's marks in a patched object (templates/kernel/include/kpatch-macros.h): what to ignore, what to call.

`.kpatch.ignore.functions` holds pointers to functions and `.kpatch.ignore.sections` pointers to section
names whose changes the patch author does not want patched (a moved WARN line, syscall metadata): after
`compare`, those functions and everything in those sections count as unchanged, so they are neither
replaced, included nor refused, and references to them reach the running original. The marks are never
included, so they do not reach the output. `.kpatch.callbacks.STAGE` tables ({callback, object name}) are
roots of the inclusion in kernel mode, which brings the callbacks (new functions) along; the kernel hook
gives them to the livepatch core. A user-space patch has no one to call them: refused. Its own hooks
(templates/user/include/patch-hooks.h: `.kpatch.hooks.STAGE`, one pointer per hook, which patch-ctl runs in
the target) are the user-space equivalent: roots of the inclusion in user mode, refused in kernel mode.
"""
from __future__ import annotations

from patch_build.diffobj.model import ObjectFile, Section, Status, Symbol
from patch_build.diffobj.problems import Problems
from patch_build.diffobj.targets import TargetResolver, string_at
from patch_build.patchformat.sections import HOOKS_PREFIX

IGNORE_FUNCTIONS = ".kpatch.ignore.functions"
IGNORE_SECTIONS = ".kpatch.ignore.sections"
CALLBACKS_PREFIX = ".kpatch.callbacks."
CALLBACK_ENTRY_SIZE = 16  # {callback, object name}
POINTER_SIZE = 8


def _pointers(sec: Section, resolver: TargetResolver, problems: Problems):
    """What each pointer-sized entry of a mark section points at; an entry without a relocation is named."""
    at = {r.offset: r for r in sec.relocations}
    for offset in range(0, sec.size, POINTER_SIZE):
        rel = at.get(offset)
        if rel is None or rel.symbol.section is None:
            problems.add(sec.name, f"entry at offset {offset} points at nothing in this unit")
            continue
        yield resolver.resolve(sec, rel)


def _keep_running(sym: Symbol) -> None:
    for s in (sym, *sym.children):
        if s.twin is None:
            continue
        s.status, s.reasons = Status.SAME, []
        sec = s.section
        if sec is not None and sec.is_text and all(f.status is Status.SAME for f in sec.symbols if f.is_function):
            sec.status = Status.SAME


def apply_ignores(patched: ObjectFile, resolver: TargetResolver, problems: Problems) -> list[str]:
    """Mark the ignored functions and sections unchanged; return what was ignored, for the warnings."""
    ignored: list[str] = []
    marks = patched.section_named(IGNORE_FUNCTIONS)
    if marks is not None:
        for t in _pointers(marks, resolver, problems):
            fn = t.symbol.alias_of or t.symbol if t.symbol is not None else None
            if fn is None or not fn.is_function:
                problems.add(IGNORE_FUNCTIONS, f"an entry points into {t.section.name}, not at a function")
                continue
            if fn.status is Status.CHANGED:
                ignored.append(f"function {fn.name}")
            _keep_running(fn)
    marks = patched.section_named(IGNORE_SECTIONS)
    if marks is not None:
        for t in _pointers(marks, resolver, problems):
            start = t.offset + (t.symbol.value if t.symbol is not None else 0)
            name = string_at(t.section, start).decode(errors="replace")
            if not name:
                problems.add(IGNORE_SECTIONS, f"an entry points into {t.section.name}, not at a section name")
                continue
            for sec in patched.sections:
                if sec.name != name:
                    continue
                if sec.status is Status.CHANGED or any(s.status is Status.CHANGED for s in sec.symbols):
                    ignored.append(f"section {name}")
                if sec.twin is not None:
                    sec.status = Status.SAME
                for sym in sec.symbols:
                    _keep_running(sym)
    for sec in (patched.section_named(IGNORE_FUNCTIONS), patched.section_named(IGNORE_SECTIONS)):
        if sec is not None:  # the marks themselves are not data of the patch
            for sym in sec.symbols:
                sym.status = Status.SAME
    return sorted(set(ignored))


def callback_sections(patched: ObjectFile) -> list[Section]:
    return [s for s in patched.sections if s.name.startswith(CALLBACKS_PREFIX) and s.size]


def hook_sections(patched: ObjectFile) -> list[Section]:
    return [s for s in patched.sections if s.name.startswith(HOOKS_PREFIX) and s.size]
