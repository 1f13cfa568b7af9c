"""What a relocation points at.

The assembler rewrites references to local symbols as references to their section's symbol plus an
offset, and string literals are reached through `.LC` labels or the section symbol. To compare and to
resolve references we need the real target: the named symbol covering the referenced address, or for
anonymous data (strings, constants, jump tables) the section and offset. For a PC-relative field in code
the referenced address is `S + A + (end of instruction - field)`, which needs the instruction length.
"""
from __future__ import annotations

from dataclasses import dataclass

from diffobj.arch import x86_64 as arch
from diffobj.model import STT_NOTYPE, Relocation, Section, Symbol


@dataclass(frozen=True, eq=False)
class Target:
    symbol: Symbol | None  # the named function/object referenced, None for anonymous data
    section: Section | None  # the section referenced (None: undefined symbol)
    offset: int  # the referenced address within `symbol` (or within `section` when anonymous)
    addend: int  # the addend to use when the reference is rewritten against `symbol`


class TargetResolver:
    """Resolves relocations of one object, caching instruction boundaries per code section."""

    def __init__(self):
        self._insns: dict[int, list[tuple[int, int]]] = {}

    def bias(self, sec: Section, rel: Relocation) -> int:
        rtype = arch.reloc_type(rel.type)
        if not rtype.pc_relative or not sec.is_text:
            return 0
        insns = self._insns.get(id(sec))
        if insns is None:
            insns = self._insns[id(sec)] = arch.instruction_ends(sec.data)
        return arch.pc_relative_bias(insns, rel.offset, rtype.size)

    def resolve(self, sec: Section, rel: Relocation) -> Target:
        sym = rel.symbol
        if not sym.is_defined or sym.section is None:
            return Target(sym, None, rel.addend, rel.addend)
        anonymous_label = sym.type == STT_NOTYPE and sym.is_local and sym.name.startswith(".L")
        if not (sym.is_section or anonymous_label):
            return Target(sym, sym.section, rel.addend, rel.addend)
        target_sec = sym.section
        base_off = sym.value if anonymous_label else 0
        named = [s for s in target_sec.symbols if not (s.type == STT_NOTYPE and s.name.startswith(".L"))]
        if len(named) == 1 and not target_sec.is_strings:
            only = named[0]
            return Target(only, target_sec, base_off + rel.addend - only.value, base_off + rel.addend - only.value)
        where = base_off + rel.addend + self.bias(sec, rel)
        if named and not target_sec.is_strings:
            hit = next((s for s in named if s.value <= where < s.value + max(s.size, 1)), None)
            if hit is not None:
                return Target(hit, target_sec, where - hit.value, base_off + rel.addend - hit.value)
        return Target(None, target_sec, where, base_off + rel.addend)


def string_at(sec: Section, offset: int) -> bytes:
    end = sec.data.find(b"\0", offset)
    return sec.data[offset:] if end < 0 else sec.data[offset:end]
