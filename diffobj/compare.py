"""Compare: mark each patched function and data object SAME, CHANGED or NEW, with the reasons.

Two extents are the same when their bytes match with relocation sites masked AND every relocation points
at the same thing: the twin symbol at the same offset, or for anonymous data the same string or constant
contents. So a changed string literal with identical code is a change; a renumbered label is not.
Data is compared first so that a function using changed read-only data is itself changed.
"""
from __future__ import annotations

from patch_build.diffobj import line_numbers, names
from patch_build.diffobj.model import (
    BOOKKEEPING_TYPES,
    SHF_MERGE,
    STT_NOTYPE,
    ObjectFile,
    Relocation,
    Section,
    Status,
    Symbol,
)
from patch_build.diffobj.targets import Target, TargetResolver, string_at
from patch_build.elfcore.x86_64 import reloc_type



def extent(sym: Symbol) -> tuple[int, int]:
    """The byte range a symbol owns: its whole section when it is the section's only symbol."""
    sec = sym.section
    if len(sec.named_symbols()) == 1:
        return 0, sec.size
    return sym.value, sym.value + sym.size


def _masked(data: bytes, lo: int, rels: list[Relocation]) -> bytes:
    buf = bytearray(data)
    for r in rels:
        size = reloc_type(r.type).size
        start = r.offset - lo
        buf[start:start + size] = bytes(size)
    return bytes(buf)


def _call_targets(rels: list[Relocation], lo: int) -> dict[int, str]:
    return {r.offset - lo: r.symbol.name for r in rels if not r.symbol.is_section}


def short_text(s: bytes, limit: int = 40) -> str:
    text = s.decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _referenced(t: Target) -> str:
    return t.symbol.display if t.symbol is not None else f"data in {t.section.name}"


class Comparer:
    def __init__(self, orig_resolver: TargetResolver, patched_resolver: TargetResolver,
                 shifts: line_numbers.LineShifts | None = None):
        self.o_res, self.p_res = orig_resolver, patched_resolver
        self.shifts = shifts  # the lines the patch moved, when known: moved __LINE__ values are no change

    def target_difference(self, o_sec: Section, ro: Relocation, p_sec: Section, rp: Relocation,
                          depth: int = 0) -> str | None:
        to, tp = self.o_res.resolve(o_sec, ro), self.p_res.resolve(p_sec, rp)
        if tp.section is None or to.section is None:  # undefined: an external name
            if tp.section is None and to.section is None and tp.symbol.name == to.symbol.name \
                    and tp.addend == to.addend:
                return None
            return f"now references {_referenced(tp)} instead of {_referenced(to)}"
        if tp.symbol is not None:
            if to.symbol is None or tp.symbol.twin is not to.symbol or tp.offset != to.offset:
                old = to.symbol.name if to.symbol is not None else to.section.name
                new = tp.symbol.name if tp.symbol.twin is not None or tp.symbol.name != old else f"a new {old}"
                return f"now references {new} instead of {old}"
            if not tp.symbol.is_function and tp.symbol.status is Status.CHANGED and tp.section.is_readonly_data:
                return f"uses changed read-only data {tp.symbol.name}"
            return None
        if to.symbol is not None:
            return f"now references data in {tp.section.name} instead of {to.symbol.name}"
        if tp.section.is_strings:
            old, new = string_at(to.section, to.offset), string_at(tp.section, tp.offset)
            if old == new or line_numbers.only_line_in_text_differs(old, new, self.shifts):
                return None
            return f'string literal changed: "{short_text(old)}" -> "{short_text(new)}"'
        if tp.section.flags & SHF_MERGE and tp.section.entsize:
            n = tp.section.entsize
            same = to.section.data[to.offset:to.offset + n] == tp.section.data[tp.offset:tp.offset + n]
            return None if same else f"constant in {tp.section.name} changed"
        # Anonymous code (the kernel's `.altinstr_aux`: static_cpu_has() slow paths, one block per use) is
        # compared by contents too: a block added before this one moves it without changing it.
        anonymous_code = tp.section.is_text and tp.section.twin is to.section
        if not (tp.section.is_readonly_data or anonymous_code):
            if tp.section.twin is not to.section or tp.offset != to.offset:
                return f"now references {tp.section.name} instead of {to.section.name}"
            return None
        # Anonymous read-only data: compare the referenced item by contents, wherever it now lies.
        if depth > 0:
            return None
        o_end = self.o_res.item_end(to.section, to.offset)
        p_end = self.p_res.item_end(tp.section, tp.offset)
        if self.compare(to.section, to.offset, o_end, tp.section, tp.offset, p_end, depth + 1):
            item = tp.section.data[tp.offset:p_end]
            if item.endswith(b"\0") and item[:-1].isascii() and b"\0" not in item[:-1]:
                old = to.section.data[to.offset:o_end].rstrip(b"\0")
                return f'string literal changed: "{short_text(old)}" -> "{short_text(item[:-1])}"'
            return f"{'code' if anonymous_code else 'data'} it uses in {tp.section.name} changed"
        return None

    def compare(self, o_sec: Section, o_lo: int, o_hi: int, p_sec: Section, p_lo: int, p_hi: int,
                depth: int = 0) -> list[str]:
        what = "code" if p_sec.is_text else "contents"
        if o_hi - o_lo != p_hi - p_lo:
            return [f"{what} changed (size {o_hi - o_lo} -> {p_hi - p_lo} bytes)"]
        o_rels = [r for r in o_sec.relocations if o_lo <= r.offset < o_hi]
        p_rels = [r for r in p_sec.relocations if p_lo <= r.offset < p_hi]
        reasons = []
        o_code = _masked(o_sec.data[o_lo:o_hi], o_lo, o_rels)
        p_code = _masked(p_sec.data[p_lo:p_hi], p_lo, p_rels)
        if o_code != p_code and not (p_sec.is_text and line_numbers.only_lines_differ(
                o_code, p_code, _call_targets(o_rels, o_lo), _call_targets(p_rels, p_lo), self.shifts)):
            reasons.append(f"{what} changed")
        if len(o_rels) != len(p_rels) or any(
                ro.offset - o_lo != rp.offset - p_lo or ro.type != rp.type for ro, rp in zip(o_rels, p_rels)):
            if not reasons:
                reasons.append(f"{what} changed (relocations differ)")
            return reasons
        for ro, rp in zip(o_rels, p_rels):
            why = self.target_difference(o_sec, ro, p_sec, rp, depth)
            if why and why not in reasons:
                reasons.append(why)
        return reasons

    def compare_symbol(self, sym: Symbol) -> None:
        if sym.twin is None:
            sym.status = Status.NEW
            return
        o_lo, o_hi = extent(sym.twin)
        p_lo, p_hi = extent(sym)
        sym.reasons = self.compare(sym.twin.section, o_lo, o_hi, sym.section, p_lo, p_hi)
        sym.status = Status.CHANGED if sym.reasons else Status.SAME


def _data_sections(obj: ObjectFile) -> list[Section]:
    return [s for s in obj.sections if s.type not in BOOKKEEPING_TYPES and s.is_alloc and not s.is_text]


def compare(orig: ObjectFile, patched: ObjectFile, comparer: Comparer, leave_out: frozenset[str] = frozenset()) -> None:
    """Set `status` (and `reasons`) on patched functions, data objects and allocated sections. Changed
    functions named in `leave_out` (and their `.cold` pieces) count as unchanged: the patch keeps the
    running ones."""
    data_syms = [s for s in patched.symbols if s.is_defined and s.section is not None and not s.is_section
                 and not s.is_function and not s.section.is_text
                 and not (s.type == STT_NOTYPE and s.name.startswith(".L"))]
    # Twice: data can point at other read-only data that changed.
    for _ in range(2):
        for sec in _data_sections(patched):
            if sec.twin is None:
                sec.status = Status.NEW
            else:
                changed = comparer.compare(sec.twin, 0, sec.twin.size, sec, 0, sec.size)
                sec.status = Status.CHANGED if changed else Status.SAME
        for sym in data_syms:
            comparer.compare_symbol(sym)
    for sec in patched.sections:
        if sec.is_text and sec.type not in BOOKKEEPING_TYPES:
            sec.status = Status.NEW if sec.twin is None else None
    for sym in patched.functions():
        comparer.compare_symbol(sym)
        owner = sym.parent.name if sym.parent is not None and names.is_cold_piece(sym.name) else sym.name
        if sym.status is Status.CHANGED and owner in leave_out:
            sym.status, sym.reasons = Status.SAME, []
    # A split-off piece that changed changes its parent: the parent's copy must jump to the new piece. Not a
    # parent left out: the running one keeps jumping to its own piece (or has none: the piece is new).
    changed = True
    while changed:
        changed = False
        for sym in patched.functions():
            parent = sym.parent
            # Only a `.cold` piece is jumped into from its parent's body; a `.part` piece is called
            # and redirected on its own.
            if sym.status is not Status.SAME and parent is not None and parent.status is Status.SAME \
                    and names.is_cold_piece(sym.name) and parent.name not in leave_out:
                parent.status = Status.CHANGED
                parent.reasons = [*parent.reasons, f"its part {sym.name} changed"]
                changed = True
    for sec in patched.sections:
        if sec.is_text and sec.status is None:
            statuses = {s.status for s in sec.symbols if s.is_function}
            sec.status = Status.CHANGED if statuses - {Status.SAME} else Status.SAME
