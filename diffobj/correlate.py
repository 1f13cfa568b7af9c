"""Correlate: link each symbol and section of the patched object to its twin in the original.

Order matters, as in kpatch: kernel dynamic debug descriptors by what they describe (`diffobj.dyndbg`); exact
names; then compiler-numbered clones whose name pattern is unique on both sides; static locals (and other
numbered local data) by the functions that use them (with their `.cold`/`.part` pieces), because their numbers
shift when a unit gains or loses one; sections follow their symbols, and anonymous sections (strings,
constants) pair by name.
"""
from __future__ import annotations

from collections import defaultdict

from patch_build.diffobj import dyndbg, names
from patch_build.diffobj.model import (
    BOOKKEEPING_TYPES,
    STT_COMMON,
    STT_FILE,
    STT_NOTYPE,
    STT_OBJECT,
    STT_TLS,
    ObjectFile,
    Symbol,
)
from patch_build.diffobj.problems import Problems
from patch_build.diffobj.targets import TargetResolver



# Types a data symbol may change between builds of one unit (a label becoming an object, common data).
_DATA_TYPES = {STT_NOTYPE, STT_OBJECT, STT_COMMON, STT_TLS}


def _pairable(sym: Symbol) -> bool:
    if sym.is_section or sym.type == STT_FILE or not sym.name or not sym.is_defined or dyndbg.is_descriptor(sym):
        return False
    return not (sym.type == STT_NOTYPE and sym.name.startswith(".L"))


def _is_numbered_local_data(sym: Symbol) -> bool:
    return sym.is_local and not sym.is_function and names.is_numbered(sym.name) and not dyndbg.is_descriptor(sym)


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
            # An absolute symbol pairs only with an absolute one: there is no content to compare.
            if (p.type == o.type or {p.type, o.type} <= _DATA_TYPES) and (p.section is None) == (o.section is None):
                _link(o, p)


def _ordered_local_refs(func: Symbol, resolver: TargetResolver) -> list[Symbol]:
    """Numbered local data a function's code references, in order of first reference: its own, then its
    `.cold`/`.part` pieces' (gcc may move a static local's only use into a piece in one build only)."""
    refs: dict[Symbol, None] = {}
    for piece in (func, *sorted(func.children, key=lambda c: c.name)):
        sec = piece.section
        for rel in sec.relocations:
            if piece.value <= rel.offset < piece.value + max(piece.size, 1):
                target = resolver.resolve(sec, rel).symbol
                if target is not None and _is_numbered_local_data(target):
                    refs[target] = None
    return list(refs)


def _refs_through_pieces(func: Symbol, resolver: TargetResolver) -> set[Symbol]:
    """Numbered local data reached through the `.part`/`.cold` pieces of other functions that `func` calls:
    a caller that inlined a function's head calls the piece gcc split off its body (ipa-split), which now
    holds the references the caller's inlined copy had."""
    reached: set[Symbol] = set()
    sec = func.section
    for rel in sec.relocations:
        if func.value <= rel.offset < func.value + max(func.size, 1):
            target = resolver.resolve(sec, rel).symbol
            if target is not None and target.is_function and target.parent is not None \
                    and target.parent is not func:
                reached.update(_ordered_local_refs(target, resolver))
    return reached


def _static_kind(sym: Symbol, strict: bool):
    if not strict:
        return names.pattern(sym.name)
    return names.pattern(sym.name), sym.section.is_nobits, sym.section.is_writable, sym.size


def _correlate_static_locals(orig, patched, o_res, p_res, problems: Problems, leave_out: frozenset[str]) -> None:
    """Pair static locals through the functions that use them.

    Within a function pair, candidates of the same pattern are told apart by kind (bss or data,
    size), then by the order of their first reference; a loose pass on the pattern alone follows so
    that a changed initial value still pairs (and is then refused as changed data). Functions in
    `leave_out` are not patched: the running ones keep their references.
    """
    pairs = [(f.twin, f) for f in patched.functions() if f.twin is not None]
    refs: dict[int, list[Symbol]] = {}
    for o_f, p_f in pairs:
        refs[id(o_f)] = _ordered_local_refs(o_f, o_res)
        refs[id(p_f)] = _ordered_local_refs(p_f, p_res)
    for strict in (True, False):
        votes: dict[Symbol, set[Symbol]] = defaultdict(set)
        for o_f, p_f in pairs:
            o_groups, p_groups = defaultdict(list), defaultdict(list)
            for v in refs[id(o_f)]:
                if v.twin is None:
                    o_groups[_static_kind(v, strict)].append(v)
            for v in refs[id(p_f)]:
                if v.twin is None:
                    p_groups[_static_kind(v, strict)].append(v)
            for kind, ps in p_groups.items():
                os_ = o_groups.get(kind, [])
                if len(ps) == len(os_):
                    for p, o in zip(ps, os_):
                        votes[p].add(o)
                else:
                    for p in ps:
                        votes[p].update(os_)
        taken: set[Symbol] = set()
        for p, cands in votes.items():
            if len(cands) == 1:
                o = next(iter(cands))
                if o.twin is None and o not in taken:
                    taken.add(o)
                    _link(o, p)
    for o_f, p_f in pairs:
        o_left = {names.pattern(v.name): v for v in refs[id(o_f)] if v.twin is None}
        for v in refs[id(p_f)]:
            if v.twin is None and names.pattern(v.name) in o_left:
                problems.add(v.name, f"cannot tell which static local of the original {p_f.name} it is "
                                     f"(candidates include {o_left[names.pattern(v.name)].name})")
    # A correlated static local that a function stopped referencing while others still use it: the
    # patched function would silently stop sharing the running state.
    users_of: dict[Symbol, list[str]] | None = None
    for o_f, p_f in pairs:
        if (names.parent_name(p_f.name) or p_f.name) in leave_out:
            continue
        p_refs = set(refs[id(p_f)])
        through_pieces: set[Symbol] | None = None
        for var in refs[id(o_f)]:
            if var.twin is None or var.twin in p_refs:
                continue
            if through_pieces is None:
                through_pieces = _refs_through_pieces(p_f, p_res)
            if var.twin in through_pieces:
                continue
            if users_of is None:
                users_of = defaultdict(list)
                for f in patched.functions():
                    for v in _ordered_local_refs(f, p_res):
                        users_of[v].append(f.name)
            users = users_of.get(var.twin)
            if users:
                problems.add(var.name, f"static local no longer referenced by {p_f.name} but still used by "
                                       f"{', '.join(sorted(users))}")


def _correlate_through_data(orig, patched, o_res: TargetResolver, p_res: TargetResolver) -> None:
    """Pair numbered locals that only data reaches (`__func__.N` from a kernel `__dyndbg` descriptor):
    where two paired data objects hold their relocations at the same places, their targets pair too.
    Repeated while it finds pairs, since such references chain."""
    found = True
    while found:
        found = False
        for p_sym in patched.symbols:
            o_sym = p_sym.twin
            if o_sym is None or p_sym.is_function or p_sym.section is None or o_sym.section is None \
                    or p_sym.section.is_text or p_sym.is_section:
                continue
            p_rels = [r for r in p_sym.section.relocations if p_sym.value <= r.offset < p_sym.value + p_sym.size]
            o_rels = [r for r in o_sym.section.relocations if o_sym.value <= r.offset < o_sym.value + o_sym.size]
            if len(p_rels) != len(o_rels):
                continue
            for pr, orr in zip(p_rels, o_rels):
                if pr.offset - p_sym.value != orr.offset - o_sym.value:
                    break
                pt = p_res.resolve(p_sym.section, pr).symbol
                ot = o_res.resolve(o_sym.section, orr).symbol
                if pt is not None and ot is not None and pt.twin is None and ot.twin is None \
                        and _is_numbered_local_data(pt) and _is_numbered_local_data(ot) \
                        and names.pattern(pt.name) == names.pattern(ot.name):
                    _link(ot, pt)
                    found = True


def _correlate_sections(orig: ObjectFile, patched: ObjectFile) -> None:
    for sec in patched.sections:
        if sec.type in BOOKKEEPING_TYPES:
            continue
        primary = next((s for s in sec.symbols if s.twin is not None and s.twin.section is not None), None)
        if primary is not None and primary.twin.section.twin is None:
            sec.twin, primary.twin.section.twin = primary.twin.section, sec
    remaining = [s for s in orig.sections if s.twin is None and s.type not in BOOKKEEPING_TYPES]
    for key, unique in ((lambda s: s.name, False), (lambda s: names.pattern(s.name), True)):
        by_key = defaultdict(list)
        for o in remaining:
            if o.twin is None and not any(sym.twin for sym in o.symbols):
                by_key[key(o)].append(o)
        p_by_key = defaultdict(list)
        for p in patched.sections:
            if p.twin is None and p.type not in BOOKKEEPING_TYPES and not any(sym.twin for sym in p.symbols):
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
              orig_resolver: TargetResolver, patched_resolver: TargetResolver,
              leave_out: frozenset[str] = frozenset()) -> None:
    for obj in (orig, patched):
        link_children(obj)
    dyndbg.correlate(orig, patched, orig_resolver, patched_resolver)
    o_syms = [s for s in orig.symbols if _pairable(s)]
    p_syms = [s for s in patched.symbols if _pairable(s)]
    plain = lambda s: not _is_numbered_local_data(s)  # noqa: E731
    _pair_by(lambda s: (s.name, s.is_function), [s for s in o_syms if plain(s)], [s for s in p_syms if plain(s)], False)
    functions = lambda ss: [s for s in ss if s.is_function]  # noqa: E731
    _pair_by(lambda s: names.pattern(s.name), functions(o_syms), functions(p_syms), True)

    _correlate_static_locals(orig, patched, orig_resolver, patched_resolver, problems, leave_out)
    _correlate_through_data(orig, patched, orig_resolver, patched_resolver)
    numbered = lambda ss: [s for s in ss if _is_numbered_local_data(s)]  # noqa: E731
    _pair_by(lambda s: names.pattern(s.name), numbered(o_syms), numbered(p_syms), True)

    _correlate_sections(orig, patched)


def link_children(obj: ObjectFile) -> None:
    """Tie `.cold` and `.part.N` pieces to the function they were split from."""
    by_name = {s.name: s for s in obj.symbols if s.is_function and s.is_defined}
    for sym in by_name.values():
        pname = names.parent_name(sym.name)
        parent = by_name.get(pname) if pname else None
        if parent is not None and parent is not sym:
            sym.parent = parent
            parent.children += (sym,)
