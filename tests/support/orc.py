"""The ORC unwind table of a relocatable object (a unit, a livepatch `.ko`), read with pyelftools, independent
of the code under test: `.orc_unwind_ip` holds one relocation per entry (to the code address it starts at),
`.orc_unwind` the entry itself at the same index (struct orc_entry, 6 bytes on 6.1 and 6.12)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

ORC_ENTRY_SIZE = 6
ORC_REG_UNDEFINED = 0  # sp_reg of an entry that says nothing (unreachable code, padding)


@dataclass(frozen=True)
class Function:
    section: str
    start: int
    size: int
    name: str


def orc_entries(path: str | os.PathLike) -> dict[tuple[str, int], bytes]:
    """{(code section, offset): orc_entry bytes}; empty when the object has no ORC table."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        ip, unwind = elf.get_section_by_name(".orc_unwind_ip"), elf.get_section_by_name(".orc_unwind")
        if ip is None:
            return {}
        data, symtab = unwind.data(), elf.get_section_by_name(".symtab")
        rela = elf.get_section_by_name(".rela.orc_unwind_ip")
        assert len(data) == ip["sh_size"] // 4 * ORC_ENTRY_SIZE == rela.num_relocations() * ORC_ENTRY_SIZE, path
        out = {}
        for r in rela.iter_relocations():
            sym = symtab.get_symbol(r["r_info_sym"])
            where = (elf.get_section(sym["st_shndx"]).name, sym["st_value"] + r["r_addend"])
            index = r["r_offset"] // 4
            assert where not in out, f"{path}: two ORC entries at {where}"
            out[where] = data[index * ORC_ENTRY_SIZE:(index + 1) * ORC_ENTRY_SIZE]
        return out


def functions(path: str | os.PathLike) -> list[Function]:
    """The defined function symbols of code sections, but CALL_PADDING's `__pfx_` (NOPs before a function)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        out = []
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(sym["st_shndx"], int) or not sym["st_size"]:
                continue
            sec = elf.get_section(sym["st_shndx"])
            if sec["sh_flags"] & 0x4 and not sym.name.startswith("__pfx_"):  # SHF_EXECINSTR
                out.append(Function(sec.name, sym["st_value"], sym["st_size"], sym.name))
        return out


def uncovered_functions(path: str | os.PathLike) -> list[str]:
    """Functions the unwinder has no ORC for: the entry in effect at their first instruction (the last one at
    or before it in their section; objtool starts a function's at its `__pfx_` padding) is missing or says
    nothing (a section's terminator, unreachable code)."""
    by_section: dict[str, list[tuple[int, bytes]]] = {}
    for (sec, off), entry in sorted(orc_entries(path).items()):
        by_section.setdefault(sec, []).append((off, entry))
    uncovered = []
    for f in functions(path):
        before = [entry for off, entry in by_section.get(f.section, []) if off <= f.start]
        if not before or before[-1][4] & 0xF == ORC_REG_UNDEFINED:  # sp_reg: the low bits of byte 4
            uncovered.append(f"{f.name} ({f.section}+{f.start:#x})")
    return sorted(uncovered)


def function_entries(entries: dict[tuple[str, int], bytes], f: Function) -> dict[int, bytes]:
    """{offset from the function's start: entry} of the entries of its section (its own, with
    -ffunction-sections: from its padding to the section's terminator)."""
    return {off - f.start: e for (sec, off), e in entries.items() if sec == f.section}
