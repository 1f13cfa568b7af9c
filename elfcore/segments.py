"""The program headers of a linked ELF file: where its loadable segments lie in the file and in memory."""
from __future__ import annotations

import struct

from patch_build.elfcore.constants import ELFMAG
from patch_build.elfcore.structs import EHDR

PHDR = struct.Struct("<IIQQQQQQ")  # ELF64 program header
PT_LOAD = 1


def load_segments(f) -> list[tuple[int, int]]:
    """(p_offset, p_vaddr) of each PT_LOAD segment of the 64-bit ELF file open as `f`; none when it is not one.
    Read with struct: `patch-ctl list` needs only this, not pyelftools."""
    head = f.read(EHDR.size)
    if len(head) < EHDR.size or head[:len(ELFMAG)] != ELFMAG or head[4] != 2:
        return []
    e_phoff, e_phentsize, e_phnum = (EHDR.unpack(head)[i] for i in (5, 9, 10))
    if e_phentsize != PHDR.size:
        return []
    f.seek(e_phoff)
    table = f.read(e_phnum * PHDR.size)  # at most 65,535 entries
    return [(p[2], p[3]) for p in PHDR.iter_unpack(table[:len(table) - len(table) % PHDR.size]) if p[0] == PT_LOAD]
