"""Write an `OutputObject` as an x86-64 ELF relocatable object, packed with the reader's record layouts.

Layout: ELF header, section contents (each aligned), relocation sections, .symtab, .strtab, .shstrtab,
then the section header table. Local symbols come first, as ELF requires; .symtab's sh_info is the index
of the first global.
"""
from __future__ import annotations

import os
import tempfile

from patch_build.diffobj.model import (
    SHF_INFO_LINK,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_LOCAL,
    STT_SECTION,
    OutputObject,
    OutSection,
)
from patch_build.elfcore.structs import EHDR, RELA, SHDR, SYM, SectionHeader

EHDR_SIZE, SHDR_SIZE, SYM_SIZE, RELA_SIZE = EHDR.size, SHDR.size, SYM.size, RELA.size
# ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, ABI version 0, padding
E_IDENT = b"\x7fELF" + bytes([2, 1, 1, 0, 0]) + bytes(7)
ET_REL, EM_X86_64, EV_CURRENT = 1, 62, 1


class _StringTable:
    def __init__(self):
        self.data = bytearray(b"\0")
        self._index: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self._index:
            self._index[s] = len(self.data)
            self.data += s.encode() + b"\0"
        return self._index[s]


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


def serialise(obj: OutputObject) -> bytes:
    shstrtab, strtab = _StringTable(), _StringTable()
    content = obj.sections
    # Section indices: 1..n contents, each followed by its relocations when it has any.
    index: dict[OutSection, int] = {}
    headers: list[dict] = [dict(name="", type=0, flags=0, data=b"", link=0, info=0, align=0, entsize=0)]
    for sec in content:
        index[sec] = len(headers)
        headers.append(dict(name=sec.name, type=sec.type, flags=sec.flags, data=sec.data, link=0, info=0,
                            align=sec.addralign, entsize=sec.entsize, size=len(sec.data)))
        if sec.relocations:
            headers.append(dict(name=".rela" + sec.name, type=SHT_RELA,
                                flags=SHF_INFO_LINK, data=None, link=None,
                                info=index[sec], align=8, entsize=RELA_SIZE, owner=sec))
    symtab_index = len(headers)
    strtab_index = symtab_index + 1
    shstrtab_index = symtab_index + 2

    locals_ = [sym for sym in obj.symbols if sym.bind == STB_LOCAL]
    globals_ = [sym for sym in obj.symbols if sym.bind != STB_LOCAL]
    ordered = locals_ + globals_
    sym_index = {sym: i + 1 for i, sym in enumerate(ordered)}
    symdata = bytearray(SYM_SIZE)
    for sym in ordered:
        if sym.section is not None:
            shndx = index[sym.section]
        else:
            shndx = sym.shndx or 0
        symdata += SYM.pack(0 if sym.type == STT_SECTION else strtab.add(sym.name), sym.bind << 4 | sym.type,
                                  sym.other & 3, shndx, sym.value, sym.size)

    for h in headers:
        if h["type"] == SHT_RELA and h["data"] is None:
            owner: OutSection = h["owner"]
            h["data"] = b"".join(RELA.pack(r.offset, (sym_index[r.symbol] << 32) | r.type, r.addend)
                                 for r in owner.relocations)
            h["link"] = symtab_index
            h["size"] = len(h["data"])
    headers.append(dict(name=".symtab", type=SHT_SYMTAB, flags=0, data=bytes(symdata), link=strtab_index,
                        info=len(locals_) + 1, align=8, entsize=SYM_SIZE, size=len(symdata)))
    headers.append(dict(name=".strtab", type=SHT_STRTAB, flags=0, data=bytes(strtab.data), link=0, info=0,
                        align=1, entsize=0, size=len(strtab.data)))
    for h in headers:
        h["name_off"] = shstrtab.add(h["name"])
    shstrtab.add(".shstrtab")
    headers.append(dict(name=".shstrtab", type=SHT_STRTAB, flags=0, data=None, link=0, info=0, align=1,
                        entsize=0, name_off=shstrtab.add(".shstrtab")))
    headers[-1]["data"] = bytes(shstrtab.data)
    headers[-1]["size"] = len(shstrtab.data)

    body = bytearray(EHDR_SIZE)
    for h in headers[1:]:
        if h["type"] == SHT_NOBITS:
            h["offset"] = _align(len(body), max(h["align"], 1))
            continue
        h["offset"] = _align(len(body), max(h["align"], 1))
        body += bytes(h["offset"] - len(body))
        body += h["data"]
    shoff = _align(len(body), 8)
    body += bytes(shoff - len(body))
    for i, h in enumerate(headers):
        body += SectionHeader(name_offset=h.get("name_off", 0), type=h["type"], flags=h["flags"], addr=0,
                              offset=h.get("offset", 0), size=h.get("size", 0), link=h["link"] or 0, info=h["info"],
                              addralign=h["align"], entsize=h["entsize"]).pack()
    body[:EHDR_SIZE] = EHDR.pack(E_IDENT, ET_REL, EM_X86_64, EV_CURRENT, 0, 0, shoff, 0, EHDR_SIZE, 0, 0,
                                       SHDR_SIZE, len(headers), shstrtab_index)
    return bytes(body)


def write_object(obj: OutputObject, path: str) -> None:
    """Write atomically: a failed run never leaves a partial object behind."""
    data = serialise(obj)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".patch-diff-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
