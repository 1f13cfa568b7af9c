"""Is a function of the original object the code a deployed binary runs?

Not a byte comparison: the binary need not be built with -ffunction-sections, and then the assembler resolves
and shortens branches between functions of one section (`jmp bump` becomes `eb xx`, 2 bytes instead of 5), so
sizes and offsets differ legitimately. Both are disassembled and compared instruction by instruction, nops left
out (alignment padding depends on placement): branches by where they go (an instruction of the same function,
or a symbol + offset), every other instruction by its bytes with the relocation sites (and the bytes a static
linker may rewrite when relaxing them) masked.

Masking the relocation sites hides what an instruction points at, so the data a function references directly
(strings, constants, read-only objects, the address of a function) is compared too, through the deployed
instruction's own displacement: a build that embeds a timestamp or build id has other strings in the
deployed binary, and a patch built from the scratch ones would give the running program strings it never had.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from patch_build.diffobj.compare import short_text
from patch_build.diffobj.model import SHF_MERGE, Relocation, Section, Symbol
from patch_build.diffobj.targets import TargetResolver, string_at
from patch_build.elfcore import x86_64

_PLT_SECTIONS = {".plt", ".plt.sec", ".plt.got", ".iplt"}


@dataclass
class Insn:
    offset: int  # from the function's start
    size: int
    mnemonic: str
    code: bytes
    target: int | None  # absolute target of a direct branch (in the disassembly's address space)


def _disassemble(code: bytes, base: int) -> list[Insn] | None:
    out = []
    for address, size, mnemonic, op_str in x86_64.disassembler().disasm_lite(code, base):
        if mnemonic == x86_64.SKIPPED_DATA:
            return None  # undecodable bytes: not comparable
        target = None
        branch = mnemonic.startswith("j") or mnemonic.startswith("loop") or mnemonic == "call"
        if branch and (op_str.startswith("0x") or op_str.isdigit()):  # capstone writes targets below 10 in decimal
            target = int(op_str, 0)
        if mnemonic != "nop":
            out.append(Insn(address - base, size, mnemonic, code[address - base:address - base + size], target))
    return out


def _index_at(insns: list[Insn], offset: int) -> int | None:
    """The instruction a branch to `offset` reaches (the first one at or after it: nops are left out)."""
    i = bisect.bisect_left([x.offset for x in insns], offset)
    return i if i < len(insns) else None


def _reloc_target(rel: Relocation, insn_end: int) -> tuple[str, int, bool]:
    """(name, offset, is_local) a PC-relative branch relocation designates."""
    offset = rel.addend + (insn_end - rel.offset)
    sym = rel.symbol
    if sym.is_section and sym.section is not None:
        func = sym.section.symbol_at(offset)
        if func is not None:
            return func.name, offset - func.value, func.is_local
        return sym.section.name, offset, True
    return sym.name, sym.value + offset if sym.is_defined else offset, sym.is_local


def _masked(data: bytes, lo: int, relocations: list[Relocation]) -> bytes:
    """`data` (the bytes at `lo` of their section) with the relocation sites zeroed: the linker fills those."""
    out = bytearray(data)
    for r in relocations:
        for i in range(max(r.offset - lo, 0), min(r.offset - lo + x86_64.reloc_type(r.type).size, len(out))):
            out[i] = 0
    return bytes(out)


def _significant(item: bytes) -> int:
    """How much of an anonymous item (bytes up to the next address referenced, in the object's or the link's
    layout: another layout, such as a deployed link built without -fdata-sections, may put other bytes after it)
    is surely the item: a string through its NUL, other bytes but for trailing NULs (alignment padding)."""
    text = item.split(b"\0", 1)[0]
    if text and len(text) < len(item) and all(b >= 0x20 or b in b"\t\n\r" for b in text):
        return len(text) + 1
    return min(len(item), len(item.rstrip(b"\0")) + 1)


def _data_difference(sec: Section, rel: Relocation, resolver: TargetResolver, deployed_at: int, binary) -> str | None:
    """Why the item `rel` references in the object is not what the deployed instruction references at
    `deployed_at`, or None. Writable data is the running program's state, which the patch shares: not compared."""
    target = rel.symbol.section
    if target is None or target.is_nobits:
        return None  # undefined: the name is the reference
    where = rel.symbol.value + rel.addend + resolver.bias(sec, rel)  # the referenced offset in `target`
    named = target.symbol_at(where)
    if named is not None and (named.is_section or named.name.startswith(".L")):
        named = None
    if named is not None and named.is_function:
        here, there = (named.name, where - named.value), binary.symbol_at(deployed_at)
        if named.name in binary.names(deployed_at - here[1]):
            return None
        deployed = f"{there[0]}+{there[1]:#x}" if there else f"{deployed_at:#x}"
        return f"the address of {here[0]}+{here[1]:#x} built, of {deployed} deployed"
    if target.is_text or not target.is_readonly_data:
        return None
    if named is not None and named.size:  # a named object: all of it
        name, lo, hi = named.name, named.value, named.value + named.size
        deployed_lo = deployed_at - (where - lo)
    else:  # anonymous: the string, constant or table referenced
        name, lo, deployed_lo = f"{target.name}+{where:#x}", where, deployed_at
        if target.is_strings:
            hi = lo + len(string_at(target, lo)) + 1
        elif target.flags & SHF_MERGE and target.entsize:
            hi = lo + target.entsize
        else:
            hi = resolver.item_end(target, lo)
            if not any(lo <= r.offset < hi for r in target.relocations):
                hi = lo + _significant(target.data[lo:hi])
    relocs = [r for r in target.relocations if lo <= r.offset < hi]
    if hi <= lo:
        return None
    ours = _masked(target.data[lo:hi], lo, relocs)
    theirs = _masked(binary.read(deployed_lo, hi - lo), lo, relocs)
    if ours == theirs:
        return None
    if target.is_strings:
        deployed = theirs.split(b"\0", 1)[0]
        return f'uses "{short_text(ours[:-1])}" built, "{short_text(deployed)}" deployed'
    return f"uses {name} ({hi - lo} bytes), other contents deployed"


def deployed_offset(sym: Symbol, offset: int, address: int, size: int, binary) -> int | None:
    """Where the instruction at `offset` of the object's function `sym` lies in its deployed copy at `address`
    (code `difference` finds the same: one instruction for one, nops left out); None when no instruction of
    ours starts there."""
    ours = _disassemble(sym.section.data[sym.value:sym.value + sym.size], 0)
    theirs = _disassemble(binary.read(address, size), address)
    if ours is None or theirs is None or len(ours) != len(theirs):
        return None
    i = _index_at(ours, offset)
    return theirs[i].offset if i is not None and ours[i].offset == offset else None


def difference(sym: Symbol, address: int, size: int, binary, resolver: TargetResolver) -> str | None:
    """Why the object's function `sym` is not the code at `address` in `binary` (a kbuild.deployed.DeployedBinary:
    read, symbol_at, names, section_name), or None when it is; `resolver` resolves the object's relocations."""
    data = sym.section.data[sym.value:sym.value + sym.size]
    ours = _disassemble(data, 0)
    theirs = _disassemble(binary.read(address, size), address)
    if ours is None or theirs is None:
        return "cannot be disassembled"
    if len(ours) != len(theirs):
        return f"{len(ours)} instructions built, {len(theirs)} deployed"
    relocs = [r for r in sym.section.relocations if sym.value <= r.offset < sym.value + sym.size]
    for a, b in zip(ours, theirs):
        start, end = sym.value + a.offset, sym.value + a.offset + a.size
        inside = [r for r in relocs if start <= r.offset < end]
        if a.target is not None and b.target is not None:
            if a.mnemonic != b.mnemonic:
                return f"+{a.offset:#x}: {a.mnemonic} built, {b.mnemonic} deployed"
            if inside:
                name, off, local = _reloc_target(inside[0], end)
                if name == sym.name and off >= 0:
                    mine = ("insn", _index_at(ours, off))
                else:
                    mine = (name, off)
            elif not 0 <= a.target < sym.size:
                # a call the assembler resolved inside one section (code built without -ffunction-sections, such
                # as a library a link-diff reads): no relocation, so the same code has the same distance deployed
                built = a.target - (1 << 64) if a.target >= 1 << 63 else a.target  # disassembled at 0
                if built == b.target - address:
                    continue
                return f"+{a.offset:#x}: {a.mnemonic} to {built:+#x} built, to {b.target - address:+#x} deployed"
            else:
                mine = ("insn", _index_at(ours, a.target))
            if address <= b.target < address + size:
                deployed = ("insn", _index_at(theirs, b.target - address))
            else:
                deployed = binary.symbol_at(b.target)
                if deployed is None and binary.section_name(b.target) in _PLT_SECTIONS and inside and not local:
                    continue  # a call through the PLT to the global the object names
            if mine != deployed and not (mine[0] != "insn" and mine[0] in binary.names(b.target - mine[1])):
                return f"+{a.offset:#x}: {a.mnemonic} to {mine} built, to {deployed} deployed"
            continue
        got = [r for r in inside if x86_64.reloc_type(r.type).relaxes_to is not None]
        if got and b.target is not None:  # `jmp *foo@GOTPCREL(%rip)` relaxed to `jmp foo; nop`
            if binary.symbol_at(b.target) != (got[0].symbol.name, 0):
                return f"+{a.offset:#x}: {a.mnemonic} through the GOT to {got[0].symbol.name} built, elsewhere deployed"
            continue
        if a.size != b.size:
            return f"+{a.offset:#x}: {a.mnemonic} ({a.size} bytes) built, {b.mnemonic} ({b.size} bytes) deployed"
        mask = bytearray(a.size)
        for r in inside:
            before, after = x86_64.reloc_type(r.type).relaxed
            lo = r.offset - start - before
            for i in range(max(lo, 0), min(r.offset - start + x86_64.reloc_type(r.type).size + after, a.size)):
                mask[i] = 1
        if any(x != y for x, y, m in zip(a.code, b.code, mask) if not m):
            return f"+{a.offset:#x}: {a.mnemonic} differs"
        for r in inside:
            rtype = x86_64.reloc_type(r.type)
            if rtype.data_address:
                pos = r.offset - start
                value = int.from_bytes(b.code[pos:pos + rtype.size], "little", signed=rtype.signed)
                # A PC-relative field in x86-64 code is a RIP-relative displacement: from the next instruction.
                deployed_at = address + b.offset + b.size + value if rtype.pc_relative else value
                why = _data_difference(sym.section, r, resolver, deployed_at, binary)
                if why:
                    return f"+{a.offset:#x}: {a.mnemonic} {why}"
    return None
