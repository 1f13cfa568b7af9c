"""What a relocation points at.

The assembler rewrites references to local symbols as references to their section's symbol plus an
offset, and string literals are reached through `.LC` labels or the section symbol. To compare and to
resolve references we need the real target: the named symbol covering the referenced address, or for
anonymous data (strings, constants, jump tables) the section and offset. For a PC-relative field in code
the referenced address is `S + A + (end of instruction - field)`, which needs the instruction length. An entry of
a position-independent jump table (`.long .Lcase - .Ltable`) is a PC-relative field in read-only data whose
addend carries its distance from the table's start: the referenced address is `S + A - (field - table start)`,
the table start being the last address at or before the field that code references.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from patch_build.diffobj.model import STT_NOTYPE, ObjectFile, Relocation, Section, Symbol
from patch_build.elfcore import x86_64 as arch


@dataclass(frozen=True, eq=False, slots=True)  # slots: one per resolved relocation, tens of thousands
class Target:
    symbol: Symbol | None  # the named function/object referenced, None for anonymous data
    section: Section | None  # the section referenced (None: undefined symbol)
    offset: int  # the referenced address within `symbol` (or within `section` when anonymous)
    addend: int  # the addend to use when the reference is rewritten against `symbol`


class TargetResolver:
    """Resolves relocations of one object, caching targets and instruction boundaries.

    The caches are keyed by the objects themselves, never by `id()`: the special-section pass replaces
    relocations and section contents, and a freed object's id is soon reused by a new one. Keys keep their
    objects alive, and a section's boundaries are remembered with the contents they were computed from.
    A relocation must not change once resolved (passes replace relocations instead).
    """

    def __init__(self, obj: ObjectFile):
        self.obj = obj
        self._insns: dict[Section, tuple[bytes, arch.InstructionBounds]] = {}
        self._items: dict[Section, tuple[bytes, list[int]]] = {}
        self._targets: dict[Relocation, Target] = {}
        self._code_refs: dict[Section, list[int]] | None = None  # data section -> offsets code references
        self._anonymous: dict[Section, set[int]] | None = None  # section -> offsets anonymous references reach

    def bias(self, sec: Section, rel: Relocation) -> int:
        rtype = arch.reloc_type(rel.type)
        if not rtype.pc_relative:
            return 0
        if not sec.is_text:
            return self.table_bias(sec, rel)
        cached = self._insns.get(sec)
        if cached is None or cached[0] is not sec.data:
            cached = self._insns[sec] = (sec.data, arch.instruction_bounds(sec.data))
        return arch.pc_relative_bias(cached[1], rel.offset, rtype.size)

    def table_bias(self, sec: Section, rel: Relocation) -> int:
        """For an entry of a position-independent jump table (a PC-relative field in read-only data): minus
        its distance from the table's start; 0 for any other field."""
        if not arch.reloc_type(rel.type).pc_relative or sec.is_text or not sec.is_readonly_data:
            return 0
        if self._code_refs is None:
            refs: dict[Section, set[int]] = {}
            for code in self.obj.sections:
                if code.is_text:
                    for r in code.relocations:
                        to, base = r.symbol.section, 0 if r.symbol.is_section else r.symbol.value
                        if to is not None and not to.is_text:
                            refs.setdefault(to, set()).add(base + r.addend + self.bias(code, r))
            self._code_refs = {s: sorted(offsets) for s, offsets in refs.items()}
        starts = self._code_refs.get(sec, ())
        i = bisect.bisect_right(starts, rel.offset) - 1
        return starts[i] - rel.offset if i >= 0 else 0

    def resolve(self, sec: Section, rel: Relocation) -> Target:
        cached = self._targets.get(rel)
        if cached is None:
            cached = self._targets[rel] = self._resolve(sec, rel)
        return cached

    def _resolve(self, sec: Section, rel: Relocation) -> Target:
        sym = rel.symbol
        if not sym.is_defined or sym.section is None:
            return Target(sym, None, rel.addend, rel.addend)
        anonymous_label = sym.type == STT_NOTYPE and sym.is_local and sym.name.startswith(".L")
        if not (sym.is_section or anonymous_label):
            return Target(sym, sym.section, rel.addend, rel.addend)
        target_sec = sym.section
        base_off = sym.value if anonymous_label else 0
        named = target_sec.named_symbols()
        if len(named) == 1 and not target_sec.is_strings and named[0].value == 0 \
                and named[0].size >= target_sec.size:
            only = named[0]  # the section is this one object: no need to locate the address
            addend = base_off + rel.addend - only.value
            return Target(only, target_sec, addend + self.table_bias(sec, rel), addend)
        if target_sec.is_strings:
            return Target(None, target_sec, base_off + rel.addend + self.bias(sec, rel), base_off + rel.addend)
        where = base_off + rel.addend + self.bias(sec, rel)
        if named and not target_sec.is_strings:
            hit = next((s for s in named if s.value <= where < s.value + max(s.size, 1)), None)
            if hit is not None:
                return Target(hit, target_sec, where - hit.value, base_off + rel.addend - hit.value)
        return Target(None, target_sec, where, base_off + rel.addend)

    def item_end(self, sec: Section, offset: int) -> int:
        """Where the anonymous item referenced at `offset` ends: at the next referenced offset.

        Sections such as `.rodata` at -O0 hold many unnamed items (strings, jump tables); the program's
        other references into the section (from its loaded sections: debug information describes named
        objects, and its relocations are read only if asked for) are the only boundaries there are.
        """
        cached = self._items.get(sec)
        if cached is None or cached[0] is not sec.data:
            if self._anonymous is None or cached is not None:  # first use, or a pass rewrote the section
                self._anonymous = self._anonymous_references()
            cached = self._items[sec] = (sec.data, sorted(self._anonymous.get(sec, set()) | {sec.size}))
        starts = cached[1]
        i = bisect.bisect_right(starts, offset)
        return starts[i] if i < len(starts) else sec.size


    def _anonymous_references(self) -> dict[Section, set[int]]:
        """The offsets anonymous references point at, by section: one pass over every relocation (one pass per
        section asked about was quadratic: a linked program's model has thousands of sections)."""
        found: dict[Section, set[int]] = {}
        for other in self.obj.sections:
            if not other.is_alloc:
                continue  # debug information describes named objects; its relocations are read only if asked for
            for rel in other.relocations:
                if rel.symbol.section is not None:
                    t = self.resolve(other, rel)
                    if t.symbol is None and t.section is not None:
                        found.setdefault(t.section, set()).add(t.offset)
        return found


def string_at(sec: Section, offset: int) -> bytes:
    end = sec.data.find(b"\0", offset)
    return sec.data[offset:] if end < 0 else sec.data[offset:end]
