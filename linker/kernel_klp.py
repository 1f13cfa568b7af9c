"""Livepatch relocations: rewrite a linked livepatch module so the livepatch core resolves its references.

The differ names every reference to a non-exported or local symbol of the running kernel
`.klp.sym.OBJ.NAME,POS` (docs/design.md). The module loader cannot resolve those, the livepatch core can
(Documentation/livepatch/module-elf-format.rst): each relocation against such a symbol moves from its
`.rela.SECTION` into a `.klp.rela.OBJ.SECTION` section (SHF_RELA_LIVEPATCH | SHF_ALLOC | SHF_INFO_LINK,
same sh_info), and each such symbol gets st_shndx SHN_LIVEPATCH.

Before the module link the symbols are made weak (`weaken_klp_symbols`) so that modpost, which rejects
undefined non-weak symbols that nothing exports, lets them through; `write_klp_relocations` makes them
global again. New sections are appended after the existing ones, so no section index changes.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.elfcore.constants import (
    ELFMAG,
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    SHN_UNDEF,
    SHT_RELA,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_WEAK,
)
from patch_build.elfcore.structs import EHDR, RELA, SYM, SectionHeader, r_sym, st_info, st_type
from patch_build.patchformat.names import is_reference, parse_reference

KLP_RELA = ".klp.rela."


class _Elf:
    def __init__(self, path: Path):
        self.path = path
        self.blob = bytearray(path.read_bytes())
        if not self.blob.startswith(ELFMAG) or len(self.blob) < EHDR.size:
            raise InputError(f"{path.name}: not an ELF file")
        self.ehdr = list(EHDR.unpack_from(self.blob))
        shoff, shnum, shstrndx = self.ehdr[6], self.ehdr[12], self.ehdr[13]
        self.shdrs = SectionHeader.table(self.blob, shoff, shnum)
        self.shstrndx = shstrndx
        symtabs = [i for i, s in enumerate(self.shdrs) if s.type == SHT_SYMTAB]
        if len(symtabs) != 1:
            raise InputError(f"{path.name}: expected one symbol table, found {len(symtabs)}")
        self.symtab = symtabs[0]

    def data(self, index: int) -> bytes:
        s = self.shdrs[index]
        return bytes(self.blob[s.offset:s.offset + s.size])

    def string(self, table: int, offset: int) -> str:
        s = self.shdrs[table]
        end = self.blob.index(b"\0", s.offset + offset)
        return self.blob[s.offset + offset:end].decode()

    def section_name(self, index: int) -> str:
        return self.string(self.shstrndx, self.shdrs[index].name_offset)

    def symbols(self):
        """(index, name, file offset of the entry, unpacked fields) of each symbol."""
        st = self.shdrs[self.symtab]
        for i in range(st.size // SYM.size):
            off = st.offset + i * SYM.size
            fields = SYM.unpack_from(self.blob, off)
            yield i, self.string(st.link, fields[0]), off, fields


def klp_objname(symbol: str) -> str:
    """OBJ of `.klp.sym.OBJ.NAME,POS`."""
    return parse_reference(symbol, kernel=True).objname


def weaken_klp_symbols(path: Path) -> int:
    """Make the undefined `.klp.sym.*` symbols of an object weak, in place; return how many there are."""
    elf = _Elf(path)
    count = 0
    for _, name, off, (st_name, info, other, shndx, value, size) in elf.symbols():
        if is_reference(name, kernel=True) and shndx == SHN_UNDEF:
            elf.blob[off:off + SYM.size] = SYM.pack(st_name, st_info(STB_WEAK, st_type(info)), other, shndx, value,
                                                      size)
            count += 1
    if count:
        path.write_bytes(elf.blob)
    return count


def write_klp_relocations(path: Path) -> list[str]:
    """Rewrite the linked module at `path` in place; return the names of the `.klp.rela.*` sections made."""
    elf = _Elf(path)
    klp_syms: dict[int, str] = {}
    for i, name, off, (st_name, info, other, shndx, value, size) in elf.symbols():
        if is_reference(name, kernel=True):
            klp_syms[i] = name
            elf.blob[off:off + SYM.size] = SYM.pack(st_name, st_info(STB_GLOBAL, st_type(info)), other,
                                                      SHN_LIVEPATCH, 0, size)
    if not klp_syms:
        return []

    new_sections: list[tuple[str, int, bytes]] = []  # name, target section, relocation entries
    for index, sh in enumerate(list(elf.shdrs)):
        if sh.type != SHT_RELA or sh.flags & SHF_RELA_LIVEPATCH:
            continue
        kept, moved = bytearray(), defaultdict(bytearray)
        raw = elf.data(index)
        for off in range(0, len(raw) - len(raw) % RELA.size, RELA.size):
            entry = raw[off:off + RELA.size]
            symbol = r_sym(RELA.unpack(entry)[1])
            if symbol in klp_syms:
                moved[klp_objname(klp_syms[symbol])] += entry
            else:
                kept += entry
        if not moved:
            continue
        if sh.link != elf.symtab:
            raise InputError(f"{path.name}: relocation section {elf.section_name(index)} uses another symbol table")
        elf.blob[sh.offset:sh.offset + len(kept)] = kept
        elf.shdrs[index] = sh._replace(size=len(kept))
        target = elf.section_name(sh.info)
        for objname, entries in sorted(moved.items()):
            new_sections.append((f"{KLP_RELA}{objname}.{target.lstrip('.')}", sh.info, bytes(entries)))

    def append(data: bytes, align: int) -> int:
        elf.blob.extend(bytes(-len(elf.blob) % align))
        start = len(elf.blob)
        elf.blob.extend(data)
        return start

    shstr = bytearray(elf.data(elf.shstrndx))
    for name, target, entries in new_sections:
        name_off = len(shstr)
        shstr += name.encode() + b"\0"
        elf.shdrs.append(SectionHeader(name_off, SHT_RELA, SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH, 0,
                                       append(entries, 8), len(entries), elf.symtab, target, 8, RELA.size))
    strtab = elf.shdrs[elf.shstrndx]
    elf.shdrs[elf.shstrndx] = strtab._replace(offset=append(bytes(shstr), 1), size=len(shstr))
    shoff = append(b"".join(s.pack() for s in elf.shdrs), 8)
    elf.ehdr[6], elf.ehdr[12] = shoff, len(elf.shdrs)
    elf.blob[:EHDR.size] = EHDR.pack(*elf.ehdr)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(elf.blob)
    os.replace(tmp, path)
    return [n for n, _, _ in new_sections]
