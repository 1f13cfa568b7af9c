"""x86-64 kernel special sections: which tables there are and how their entries are laid out.

Each table holds fixed-size entries; the relocation at `anchor` inside an entry points at the code the
entry describes, so an entry belongs to the function whose section that relocation targets. The size of an
entry that is a C struct changes between kernel versions (struct alt_instr: 12 bytes in 6.1, 14 in 6.12), so
it is not written here: it comes with the diff (`StructSizes`, from the kernel tree being built or patch-diff's
options); the tables of plain s32 offsets or addresses (objtool's, ORC's index) have an architectural size.

Not carried, so a patch never has them: `.ibt_endbr_seal` (6.2+, IBT: the endbr64 objtool found no indirect
call to, which the loader overwrites; sealing is hardening, and a function another unit of the patch calls
indirectly must keep its endbr64) and `__patchable_function_entries` (CALL_PADDING's -fpatchable-function-entry
records the padding; x86's ftrace uses __mcount_loc, and the kernel discards it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialSection:
    name: str
    struct: str | None = None  # the C struct each entry is, whose size the kernel being built decides
    fixed_size: int | None = None  # else: the entry size, the same on every kernel
    anchor: int = 0  # offset of the field that points at the described code
    # .altinstructions: offset of the field pointing into .altinstr_replacement; the replacement's length is
    # the entry's last byte (u8 replacementlen, in every layout so far)
    replacement: int | None = None
    paired: str | None = None  # a table without relocations whose entries go index by index with this one
    paired_struct: str | None = None  # the struct of the paired table's entries
    # The assembler aligns each entry's start, not its end: the last entry may lack its tail padding
    # (.parainstructions: `.balign 8; .quad; .byte; .byte` is 10 bytes of a 16-byte struct).
    short_last: int | None = None


# kpatch-build's environment variables for each struct size (create-diff-object reads them).
KPATCH_SIZE_VARIABLES = {
    "ALT_STRUCT_SIZE": "alt_instr",
    "BUG_STRUCT_SIZE": "bug_entry",
    "EX_STRUCT_SIZE": "exception_table_entry",
    "JUMP_STRUCT_SIZE": "jump_entry",
    "PARA_STRUCT_SIZE": "paravirt_patch_site",
    "ORC_STRUCT_SIZE": "orc_entry",
    "STATIC_CALL_STRUCT_SIZE": "static_call_site",
    "PRINTK_INDEX_STRUCT_SIZE": "pi_entry",
}
# The header that defines each struct, for a probe compiled in the kernel tree.
STRUCT_HEADERS = {
    "alt_instr": "asm/alternative.h",
    "bug_entry": "linux/bug.h",
    "exception_table_entry": "asm/extable.h",
    "jump_entry": "linux/jump_label.h",
    "paravirt_patch_site": "asm/paravirt_types.h",
    "orc_entry": "asm/orc_types.h",
    "static_call_site": "linux/static_call_types.h",
    "pi_entry": "linux/printk.h",
}

SPECIAL_SECTIONS = {s.name: s for s in [
    SpecialSection("__bug_table", "bug_entry"),  # s32 addr, s32 file, u16 line, u16 flags
    SpecialSection("__jump_table", "jump_entry"),  # s32 code, s32 target, long key
    SpecialSection("__ex_table", "exception_table_entry"),  # int insn, fixup, data
    SpecialSection(".altinstructions", "alt_instr", replacement=4),  # s32 instr, s32 repl, ..., u8 replacementlen
    SpecialSection(".parainstructions", "paravirt_patch_site", short_last=10),  # u8 *instr, u8 type, u8 len
    SpecialSection(".static_call_sites", "static_call_site"),  # s32 addr, s32 key
    SpecialSection(".return_sites", fixed_size=4),  # s32 each, written by objtool
    SpecialSection(".call_sites", fixed_size=4),  # call depth tracking: the calls to account
    SpecialSection(".retpoline_sites", fixed_size=4),
    SpecialSection(".smp_locks", fixed_size=4),  # s32 to a lock prefix
    SpecialSection("__mcount_loc", fixed_size=8),  # address of the fentry call
    SpecialSection(".orc_unwind_ip", fixed_size=4, paired=".orc_unwind", paired_struct="orc_entry"),  # s32 each
]}
ALT_REPLACEMENT = ".altinstr_replacement"
# Out-of-line code of static_cpu_has() that included code jumps into (and which jumps back).
ALT_AUX = ".altinstr_aux"
FENTRY = "__fentry__"
# The fentry call (or the NOP objtool made of it, still relocated against __fentry__) is the first
# instruction, after an endbr64 when IBT is on: its rel32 field sits here.
FENTRY_FIELD_OFFSETS = (1, 5)
