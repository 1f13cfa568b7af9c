"""Include: choose what the patch carries, and why.

Starting from changed and new functions, follow their relocations: new functions, new data, changed
read-only data, string literals and other anonymous read-only data (jump tables) come along; everything
that exists unchanged in the original (functions and all existing writable data) does not, so the patch
uses the running state. Each inclusion records its reason for the report.
"""
from __future__ import annotations

from dataclasses import dataclass

from diffobj.model import ObjectFile, Section, Status, Symbol
from diffobj.problems import Problems
from diffobj.targets import TargetResolver


@dataclass(frozen=True)
class Included:
    symbol: str
    kind: str  # function | object | section
    reason: str


def _owner(sec: Section) -> str:
    named = [s for s in sec.symbols if s.is_function or s.is_object]
    return named[0].name if named else sec.name


def include(patched: ObjectFile, resolver: TargetResolver, problems: Problems) -> list[Included]:
    included: list[Included] = []
    work: list[Section] = []

    def add(sec: Section, name: str, kind: str, reason: str) -> None:
        if sec.included:
            return
        sec.included = True
        included.append(Included(name, kind, reason))
        work.append(sec)

    for f in patched.functions():
        if f.parent is not None and f.parent.status is not Status.SAME:
            continue  # comes with its parent
        if f.status is Status.CHANGED:
            add(f.section, f.name, "function", "; ".join(f.reasons))
        elif f.status is Status.NEW and not f.is_local:
            add(f.section, f.name, "function", "new function")
    for sym in patched.symbols:
        if sym.is_object and sym.status is Status.NEW and not sym.is_local and sym.section is not None:
            _include_data(sym, sym.section, "new global variable", add, problems)

    while work:
        sec = work.pop()
        owner = _owner(sec)
        for f in sec.symbols:
            for child in f.children:
                add(child.section, child.name, "function", f"part of {f.name}")
        for rel in sec.relocations:
            t = resolver.resolve(sec, rel)
            tsec = t.section
            if tsec is None or tsec.included:
                continue
            sym = t.symbol.alias_of or t.symbol if t.symbol is not None else None
            if sym is not None and (sym.is_function or tsec.is_text):
                if sym.status is Status.NEW:
                    add(tsec, sym.name, "function", f"new, used by {owner}")
                elif sym.status is Status.CHANGED:
                    add(tsec, sym.name, "function", "; ".join(sym.reasons))
            elif sym is not None:
                if sym.status is Status.NEW:
                    _include_data(sym, tsec, f"new data, used by {owner}", add, problems)
                elif sym.status is Status.CHANGED and tsec.is_readonly_data:
                    add(tsec, sym.name, "object", f"changed read-only data, used by {owner}")
            elif tsec.is_text:
                if tsec.status is not Status.SAME:
                    add(tsec, tsec.name, "section", f"code used by {owner}")
            elif tsec.is_readonly_data:
                what = "string literals" if tsec.is_strings else "read-only data"
                add(tsec, tsec.name, "section", f"{what} used by {owner}")
            elif tsec.status is Status.NEW:
                add(tsec, tsec.name, "section", f"new data, used by {owner}")
            else:
                problems.add(owner, f"references anonymous writable data in {tsec.name}, which cannot be "
                                    "found in the running program (build with -fdata-sections)")
    return included


def _include_data(sym: Symbol, sec: Section, reason: str, add, problems: Problems) -> None:
    existing = [s for s in sec.symbols if s.twin is not None and s.is_object]
    if sec.is_writable and existing:
        problems.add(sym.name, f"new data shares section {sec.name} with existing {existing[0].name}: "
                               "build with -fdata-sections")
        return
    add(sec, sym.name, "object", reason)
