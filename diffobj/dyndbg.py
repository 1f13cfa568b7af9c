"""Kernel dynamic debug descriptors: one `struct _ddebug` per `pr_debug()`/`dev_dbg()` call site, in `__dyndbg`.

A section attribute keeps them all in one section, which -fdata-sections cannot split, and `__COUNTER__` numbers
their names (`__UNIQUE_ID_ddebug194.3`): a patch that adds a call site or an `#include` renumbers the rest, and
one that adds lines above them changes their line fields. So, as kpatch does in effect (it never correlates them
and carries them all), a descriptor is what it describes:

- `split` (before the other passes, kernel mode): each descriptor gets a section of its own, still named
  `__dyndbg` (the link joins them into the module's one table), and references to the table become references
  to the descriptor, as -fdata-sections would have made them;
- `correlate`: a descriptor pairs with the original one for the same call site: the same module, function, file,
  format and flags (what its pointers reference, its other fields), whatever its name and line;
- `forget_moved_lines` (after compare): a paired descriptor differs at most in its line field: unchanged.

A new descriptor used by included code is then new data the patch carries (the patch module registers it); one
only unchanged code uses is neither carried nor refused.
"""
from __future__ import annotations

from collections import defaultdict

from patch_build.diffobj import names
from patch_build.elfcore import x86_64 as arch
from patch_build.diffobj.model import ObjectFile, Relocation, Section, Status, Symbol
from patch_build.diffobj.targets import Target, TargetResolver, string_at

SECTION = "__dyndbg"
# struct _ddebug (6.1, 6.12): modname, function, filename, format pointers, then `unsigned int lineno:18` first
# in a bit-field word (little-endian: its low bits).
LINE_FIELD = 32
LINE_MASK = (1 << 18) - 1


def is_descriptor(sym: Symbol) -> bool:
    return sym.is_object and sym.section is not None and sym.section.name == SECTION


def split(obj: ObjectFile) -> None:
    """Give each descriptor of `obj`'s `__dyndbg` a section of its own (see the module's docstring)."""
    for sec in [s for s in obj.sections if s.name == SECTION]:
        descriptors = sorted((s for s in sec.symbols if s.is_object and s.size), key=lambda s: s.value)
        repointed = _repointed_references(obj, sec, descriptors)
        if repointed is None:
            continue  # a reference between descriptors or a relocation outside one: keep the table whole
        pieces = []
        for d in descriptors:
            lo, hi = d.value, d.value + d.size
            piece = Section(index=sec.index, name=sec.name, type=sec.type, flags=sec.flags, addralign=sec.addralign,
                            entsize=sec.entsize, data=sec.data[lo:hi], link=sec.link, info=sec.info,
                            relocations=[Relocation(r.offset - lo, r.type, r.symbol, r.addend)
                                         for r in sec.relocations if lo <= r.offset < hi],
                            symbols=[d], group=sec.group)
            d.section, d.value = piece, 0
            pieces.append(piece)
        for other, rels in repointed.items():
            other.relocations = rels
        at = obj.sections.index(sec)
        obj.sections[at:at + 1] = pieces


def _repointed_references(obj: ObjectFile, sec: Section, descriptors: list[Symbol]) -> dict[Section, list] | None:
    """For each section referencing `sec` through its section symbol or a label: its relocations with those
    references made against the descriptor they reach; None when the table cannot be split."""
    if not descriptors or any(a.value + a.size > b.value for a, b in zip(descriptors, descriptors[1:])):
        return None
    inside = lambda offset: any(d.value <= offset < d.value + d.size for d in descriptors)  # noqa: E731
    if not all(inside(r.offset) for r in sec.relocations):
        return None
    resolver = TargetResolver(obj)
    repointed: dict[Section, list] = {}
    for other in obj.sections:
        rels, touched = [], False
        for r in other.relocations:
            if r.symbol.section is sec and r.symbol not in descriptors:
                t = resolver.resolve(other, r)
                if t.symbol not in descriptors:
                    return None
                r, touched = Relocation(r.offset, r.type, t.symbol, t.addend), True
            rels.append(r)
        if touched:
            repointed[other] = rels
    return repointed


def correlate(orig: ObjectFile, patched: ObjectFile, o_res: TargetResolver, p_res: TargetResolver) -> None:
    """Pair descriptors describing the same call site; those of equal description pair in order."""
    by_key: dict[tuple, list[Symbol]] = defaultdict(list)
    for d in orig.symbols:
        if is_descriptor(d) and d.twin is None:
            by_key[_description(d, o_res)].append(d)
    for d in patched.symbols:
        if is_descriptor(d) and d.twin is None:
            candidates = by_key.get(_description(d, p_res))
            if candidates:
                o = candidates.pop(0)
                o.twin, d.twin = d, o


def _description(d: Symbol, resolver: TargetResolver) -> tuple:
    """What a descriptor describes: its bytes without its line and relocated fields, and what each pointer
    references, by contents."""
    sec = d.section
    lo, hi = d.value, d.value + d.size
    data = bytearray(sec.data[lo:hi])
    rels = [r for r in sec.relocations if lo <= r.offset < hi]
    for r in rels:
        size = arch.reloc_type(r.type).size
        data[r.offset - lo:r.offset - lo + size] = bytes(size)
    if len(data) >= LINE_FIELD + 4:
        word = int.from_bytes(data[LINE_FIELD:LINE_FIELD + 4], "little") & ~LINE_MASK
        data[LINE_FIELD:LINE_FIELD + 4] = word.to_bytes(4, "little")
    return bytes(data), tuple((r.offset - lo, r.type, _referenced(resolver.resolve(sec, r))) for r in rels)


def _referenced(t: Target) -> tuple:
    if t.section is None:
        return "symbol", t.symbol.name, t.offset
    if t.symbol is None:  # a string literal (file, format, module name)
        return "string", string_at(t.section, t.offset)
    contents = b"" if t.section.is_nobits else t.section.data[t.symbol.value:t.symbol.value + t.symbol.size]
    return "object", names.pattern(t.symbol.name), contents, t.offset  # `__func__.N`: the function's name


def forget_moved_lines(patched: ObjectFile) -> None:
    """Paired descriptors differ at most in their line fields (`correlate`): the running ones stay in use."""
    for d in patched.symbols:
        if is_descriptor(d) and d.twin is not None and d.status is Status.CHANGED:
            d.status, d.reasons = Status.SAME, []
            if all(s.status is Status.SAME for s in d.section.symbols):
                d.section.status = Status.SAME
