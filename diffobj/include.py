"""Include: choose what the patch carries, and why.

Starting from changed and new functions, follow their relocations: new functions, new data, changed
read-only data, string literals and other anonymous read-only data (jump tables) come along; everything
that exists unchanged in the original (functions and all existing writable data) does not, so the patch
uses the running state. Each inclusion records its reason for the report.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from patch_build.diffobj.model import ObjectFile, Section, Status, Symbol
from patch_build.diffobj.problems import Problems
from patch_build.diffobj.targets import Target, TargetResolver


@dataclass(frozen=True)
class Included:
    symbol: str
    kind: str  # function | object | section
    reason: str


# Where gcc puts data without -fdata-sections; any other section is named by the data's definition.
_DEFAULT_DATA_SECTIONS = frozenset({".data", ".bss", ".rodata", ".data.rel", ".data.rel.local", ".data.rel.ro",
                                    ".data.rel.ro.local", ".tdata", ".tbss"})


def _uses_data_sections(obj: ObjectFile) -> bool:
    """Whether the unit was built with -fdata-sections: some object lies in a section named after it."""
    return any(s.is_object and s.section is not None and s.section.name.endswith("." + s.name)
               and s.section.name != "." + s.name for s in obj.symbols)


def _shared_section_advice(obj: ObjectFile, sec: Section) -> str:
    """What to do about data sharing a section the running program keeps: -fdata-sections would give it a
    section of its own, unless a section attribute put it there or the build has the flag already."""
    if sec.name in _DEFAULT_DATA_SECTIONS and not _uses_data_sections(obj):
        return "build with -fdata-sections"
    return "its definition places it there (a section attribute), so it cannot be carried alone"


def _owner(sec: Section) -> str | None:
    named = [s for s in sec.symbols if s.is_function or s.is_object]
    return named[0].name if named else None


class Inclusion:
    """The set of included sections and the worklist that follows their relocations."""

    def __init__(self, patched: ObjectFile, resolver: TargetResolver, problems: Problems,
                 carried: frozenset[str] = frozenset()):
        self.patched, self.resolver, self.problems = patched, resolver, problems
        self.carried = carried  # code sections that come whole once included code uses them
        self.included: list[Included] = []
        self._work: list[Section] = []
        self._users: dict[Section, str] = {}  # anonymous data -> the first included function or object using it

    def add(self, sec: Section, name: str, kind: str, reason: str) -> None:
        if sec.included:
            return
        sec.included = True
        self.included.append(Included(name, kind, reason))
        self._work.append(sec)

    def add_roots(self) -> None:
        for f in self.patched.functions():
            if f.parent is not None and f.parent.status is not Status.SAME:
                continue  # comes with its parent
            if f.status is Status.CHANGED:
                self.add(f.section, f.name, "function", "; ".join(f.reasons))
            elif f.status is Status.NEW and not f.is_local:
                self.add(f.section, f.name, "function", "new function")
        for sym in self.patched.symbols:
            if sym.is_object and sym.status is Status.NEW and not sym.is_local and sym.section is not None:
                self.add_data(sym, sym.section, "new global variable")

    def add_table(self, sec: Section, reason: str) -> None:
        """A section carried whole, whatever changed: each object in it is listed."""
        objects = [s for s in sec.symbols if s.is_object]
        self.add(sec, objects[0].name if objects else sec.name, "object" if objects else "section", reason)
        self.included += [Included(s.name, "object", reason) for s in objects[1:]]

    def add_data(self, sym: Symbol, sec: Section, reason: str) -> None:
        existing = [s for s in sec.symbols if s.twin is not None and s.is_object]
        if sec.is_writable and existing:
            self.problems.add(sym.name, f"new data shares section {sec.name} with existing {existing[0].name}: "
                                        f"{_shared_section_advice(self.patched, sec)}")
            return
        self.add(sec, sym.name, "object", reason)

    def follow(self) -> None:
        """Include what the included sections need, until nothing new is needed."""
        while self._work:
            sec = self._work.pop()
            owner = _owner(sec) or self._users.get(sec, sec.name)
            for f in sec.symbols:
                for child in f.children:
                    self.add(child.section, child.name, "function", f"part of {f.name}")
            for rel in sec.relocations:
                self._follow_reference(sec, rel, owner)

    def _follow_reference(self, sec: Section, rel, owner: str) -> None:
        t = self.resolver.resolve(sec, rel)
        tsec = t.section
        if tsec is None:  # undefined or absolute: the running program has it by name
            self.require_available(t, owner)
            return
        if tsec.included:
            return
        sym = t.symbol.alias_of or t.symbol if t.symbol is not None else None
        if sym is not None and (sym.is_function or tsec.is_text):
            if sym.status is Status.NEW:
                self.add(tsec, sym.name, "function", f"new, used by {owner}")
            elif sym.status is Status.CHANGED:
                self.add(tsec, sym.name, "function", "; ".join(sym.reasons))
        elif sym is not None:
            if sym.status is Status.NEW:
                self.add_data(sym, tsec, f"new data, used by {owner}")
            elif sym.status is Status.CHANGED and tsec.is_readonly_data:
                self.add(tsec, sym.name, "object", f"changed read-only data, used by {owner}")
        elif tsec.is_text:
            if tsec.status is not Status.SAME or tsec.name in self.carried:
                self.add(tsec, tsec.name, "section", f"code used by {owner}")
        elif tsec.is_readonly_data:
            what = "string literals" if tsec.is_strings else "read-only data"
            self.add(tsec, tsec.name, "section", f"{what} used by {owner}")
            self._users.setdefault(tsec, owner)  # what its references need is for `owner`
        elif tsec.status is Status.NEW:
            self.add(tsec, tsec.name, "section", f"new data, used by {owner}")
        else:
            self.problems.add(owner, f"references anonymous writable data in {tsec.name}, which cannot be "
                                     f"found in the running program ({_shared_section_advice(self.patched, tsec)})")
            return
        self.require_available(t, owner)

    def require_available(self, t: Target, owner: str) -> None:
        """Refuse a reference to something the patch does not carry and the running program does not have
        (an inconsistent object, e.g. one whose sections changed kind between the builds; a linked program's code
        or data outside its functions and objects, which diffobj.linked names after its output section)."""
        if t.section is None and t.symbol.name.startswith("."):
            self.problems.add(owner, f"references {t.symbol.name}, which lies in no function or object of the "
                                     "program: the running program has no name for it")
            return
        if (t.section is not None and t.section.included) or \
                (t.symbol is not None and (t.symbol.twin is not None or not t.symbol.is_defined)):
            return
        self.problems.add(owner, f"references {t.symbol.name if t.symbol else t.section.name}, which is neither "
                                 "in the original object nor included in the patch")


def include(patched: ObjectFile, resolver: TargetResolver, problems: Problems,
            roots: Sequence[Section] = (), carried: frozenset[str] = frozenset()) -> Inclusion:
    """`roots`: sections the patch carries whatever changed (the kernel's livepatch callback tables);
    `carried`: code sections carried whole when included code uses them (the kernel's `.altinstr_aux`)."""
    inclusion = Inclusion(patched, resolver, problems, carried)
    inclusion.add_roots()
    for sec in roots:
        inclusion.add_table(sec, "livepatch callbacks")
    inclusion.follow()
    return inclusion
