"""Correlate: link each symbol and section of the patched object to its twin in the original.

Order matters, as in kpatch: exact names first; then compiler-numbered clones whose name pattern is
unique on both sides; static locals (and other numbered local data) by the functions that use them,
because their numbers shift when a unit gains or loses one; sections follow their symbols, and
anonymous sections (strings, constants) pair by name.
"""
from __future__ import annotations

from collections import defaultdict

from diffobj import names
from diffobj.model import (
    SHT_GROUP,
    SHT_NULL,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STT_FILE,
    STT_NOTYPE,
    ObjectFile,
    Symbol,
)
from diffobj.problems import Problems
from diffobj.targets import TargetResolver

_BOOKKEEPING = (SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_REL, SHT_GROUP)


def _pairable(sym: Symbol) -> bool:
    if sym.is_section or sym.type == STT_FILE or not sym.name or not sym.is_defined:
        return False
    return not (sym.type == STT_NOTYPE and sym.name.startswith(".L"))


def _is_numbered_local_data(sym: Symbol) -> bool:
    return sym.is_local and not sym.is_function and names.is_numbered(sym.name)


def _link(a: Symbol, b: Symbol) -> None:
    a.twin, b.twin = b, a


def _pair_by(key, orig_syms, patched_syms, unique_only: bool) -> None:
    by_key = defaultdict(list)
    for o in orig_syms:
        if o.twin is None:
            by_key[key(o)].append(o)
    patched_by_key = defaultdict(list)
    for p in patched_syms:
        if p.twin is None:
            patched_by_key[key(p)].append(p)
    for k, ps in patched_by_key.items():
        os_ = by_key.get(k, [])
        if unique_only and (len(ps) != 1 or len(os_) != 1):
            continue
        for p, o in zip(ps, os_):
            if p.type == o.type or {p.type, o.type} <= {1, 5, 6, 0}:
                _link(o, p)


def referenced_by_function(obj: ObjectFile, resolver: TargetResolver) -> dict[Symbol, dict[Symbol, None]]:
    """For each named symbol, the functions whose code references it."""
    users: dict[Symbol, dict[Symbol, None]] = defaultdict(dict)  # ordered sets
    for sec in obj.sections:
        if not sec.is_text or not sec.relocations:
            continue
        funcs = [s for s in sec.symbols if s.is_function]
        for rel in sec.relocations:
            target = resolver.resolve(sec, rel).symbol
            if target is None or target.is_section:
                continue
            for f in funcs:
                if f.value <= rel.offset < f.value + max(f.size, 1):
                    users[target][f] = None
    return users


def _correlate_static_locals(orig, patched, o_users, p_users, problems: Problems) -> None:
    o_refs: dict[Symbol, list[Symbol]] = defaultdict(list)  # orig function -> numbered locals it uses
    for var, funcs in o_users.items():
        if _is_numbered_local_data(var):
            for f in funcs:
                o_refs[f].append(var)
    for var, funcs in p_users.items():
        if not _is_numbered_local_data(var) or var.twin is not None:
            continue
        candidates = {o for f in funcs if f.twin is not None for o in o_refs.get(f.twin, [])
                      if o.twin is None and names.pattern(o.name) == names.pattern(var.name)}
        if len(candidates) == 1:
            _link(candidates.pop(), var)
    # A correlated static local that a function stopped referencing while others still use it: the
    # patched function would silently stop sharing the running state.
    for var, funcs in o_users.items():
        if not _is_numbered_local_data(var) or var.twin is None:
            continue
        still_used = p_users.get(var.twin, {})
        for f in funcs:
            if f.twin is not None and still_used and f.twin not in still_used:
                problems.add(var.name, f"static local no longer referenced by {f.twin.name} but still used by "
                                       f"{', '.join(sorted(u.name for u in still_used))}")


def _correlate_sections(orig: ObjectFile, patched: ObjectFile) -> None:
    for sec in patched.sections:
        if sec.type in _BOOKKEEPING:
            continue
        primary = next((s for s in sec.symbols if s.twin is not None and s.twin.section is not None), None)
        if primary is not None and primary.twin.section.twin is None:
            sec.twin, primary.twin.section.twin = primary.twin.section, sec
    remaining = [s for s in orig.sections if s.twin is None and s.type not in _BOOKKEEPING]
    for key, unique in ((lambda s: s.name, False), (lambda s: names.pattern(s.name), True)):
        by_key = defaultdict(list)
        for o in remaining:
            if o.twin is None and not any(sym.twin for sym in o.symbols):
                by_key[key(o)].append(o)
        p_by_key = defaultdict(list)
        for p in patched.sections:
            if p.twin is None and p.type not in _BOOKKEEPING and not any(sym.twin for sym in p.symbols):
                p_by_key[key(p)].append(p)
        for k, ps in p_by_key.items():
            os_ = by_key.get(k, [])
            if unique and (len(ps) != 1 or len(os_) != 1):
                continue
            for p, o in zip(ps, os_):
                if o.twin is None:
                    p.twin, o.twin = o, p
    for sec in patched.sections:
        if sec.twin is not None and sec.section_symbol is not None and sec.twin.section_symbol is not None:
            _link(sec.twin.section_symbol, sec.section_symbol)


def correlate(orig: ObjectFile, patched: ObjectFile, problems: Problems,
              orig_resolver: TargetResolver, patched_resolver: TargetResolver) -> None:
    o_syms = [s for s in orig.symbols if _pairable(s)]
    p_syms = [s for s in patched.symbols if _pairable(s)]
    plain = lambda s: not _is_numbered_local_data(s)  # noqa: E731
    _pair_by(lambda s: (s.name, s.is_function), [s for s in o_syms if plain(s)], [s for s in p_syms if plain(s)], False)
    functions = lambda ss: [s for s in ss if s.is_function]  # noqa: E731
    _pair_by(lambda s: names.pattern(s.name), functions(o_syms), functions(p_syms), True)

    o_users = referenced_by_function(orig, orig_resolver)
    p_users = referenced_by_function(patched, patched_resolver)
    _correlate_static_locals(orig, patched, o_users, p_users, problems)
    numbered = lambda ss: [s for s in ss if _is_numbered_local_data(s)]  # noqa: E731
    _pair_by(lambda s: names.pattern(s.name), numbered(o_syms), numbered(p_syms), True)

    _correlate_sections(orig, patched)
    for obj in (orig, patched):
        link_children(obj)


def link_children(obj: ObjectFile) -> None:
    """Tie `.cold` and `.part.N` pieces to the function they were split from."""
    by_name = {s.name: s for s in obj.symbols if s.is_function and s.is_defined}
    for sym in by_name.values():
        pname = names.parent_name(sym.name)
        parent = by_name.get(pname) if pname else None
        if parent is not None and parent is not sym:
            sym.parent = parent
            parent.children.append(sym)
