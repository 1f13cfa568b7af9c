"""x86-64 kernel special sections: entry layouts for Debian's 6.1 kernel (CONFIG_DEBUG_BUGVERBOSE=y,
GENERIC_BUG_RELATIVE_POINTERS, PARAVIRT, JUMP_LABEL, HAVE_STATIC_CALL_INLINE, RETPOLINE/RETHUNK, ORC).

Each table holds fixed-size entries; the relocation at `anchor` inside an entry points at the code the
entry describes, so an entry belongs to the function whose section that relocation targets.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialSection:
    name: str
    entry_size: int
    anchor: int = 0  # offset of the field that points at the described code
    # .altinstructions: offset and width of the field pointing into .altinstr_replacement, and of its length
    replacement: int | None = None
    replacement_len: int | None = None
    paired: str | None = None  # a table without relocations whose entries go index by index with this one


SPECIAL_SECTIONS = {s.name: s for s in [
    SpecialSection("__bug_table", 12),  # struct bug_entry: s32 addr, s32 file, u16 line, u16 flags
    SpecialSection("__jump_table", 16),  # struct jump_entry: s32 code, s32 target, long key
    SpecialSection("__ex_table", 12),  # struct exception_table_entry: int insn, fixup, data
    # struct alt_instr: s32 instr, s32 repl, u16 cpuid, u8 instrlen, u8 replacementlen (packed)
    SpecialSection(".altinstructions", 12, replacement=4, replacement_len=11),
    SpecialSection(".parainstructions", 16),  # struct paravirt_patch_site: u8 *instr, u8 type, u8 len
    SpecialSection(".static_call_sites", 8),  # struct static_call_site: s32 addr, s32 key
    SpecialSection(".return_sites", 4),  # s32 each, written by objtool
    SpecialSection(".call_sites", 4),
    SpecialSection(".retpoline_sites", 4),
    SpecialSection(".smp_locks", 4),  # s32 to a lock prefix
    SpecialSection("__mcount_loc", 8),  # address of the fentry call
    SpecialSection("__patchable_function_entries", 8),
    SpecialSection(".orc_unwind_ip", 4, paired=".orc_unwind"),  # s32 each; .orc_unwind: 6-byte orc_entry
]}
ORC_ENTRY_SIZE = 6
ALT_REPLACEMENT = ".altinstr_replacement"
# Out-of-line code of static_cpu_has() that included code jumps into (and which jumps back).
ALT_AUX = ".altinstr_aux"
FENTRY = "__fentry__"
# The fentry call (or the NOP objtool made of it, still relocated against __fentry__) is the first
# instruction, after an endbr64 when IBT is on: its rel32 field sits here.
FENTRY_FIELD_OFFSETS = (1, 5)
