"""Kernel runtime constants (6.11+, x86-64) in the code a patch carries.

`runtime_const_ptr(SYM)` compiles to `movabs $0x0123456789abcdef, %reg`, recorded in section
`runtime_ptr_SYM`; vmlinux's boot code writes SYM's value over the placeholder, and nothing does so in a
module, where asm/runtime-const.h is not even allowed (asm/uaccess_64.h reads the variable instead). Copied
as is, a patched function would compare against the placeholder. So each such load in included code becomes
what a module compiles to, `mov SYM(%rip), %reg` (7 bytes) and a 3-byte NOP in the 10 bytes of the movabs.
`runtime_const_shift_right_32(val, SYM)` (`runtime_shift_SYM`) keeps its count in an 8-bit immediate,
which no same-size instruction can load from memory: a function using one is refused.
"""
from __future__ import annotations

from patch_build.elfcore.x86_64 import R_X86_64_PC32
from patch_build.diffobj.model import SHN_UNDEF, STB_GLOBAL, STT_NOTYPE, ObjectFile, Relocation, Section, Symbol
from patch_build.diffobj.problems import Problems

PTR_PREFIX, SHIFT_PREFIX = "runtime_ptr_", "runtime_shift_"
NOP3 = bytes.fromhex("0f1f00")
_MOVABS_LEN, _MOV_RIP_LEN = 10, 7  # REX.W B8+r imm64; REX.W 8B modrm disp32


def rewrite_runtime_constants(patched: ObjectFile, problems: Problems) -> None:
    for table in list(patched.sections):
        if table.name.startswith(SHIFT_PREFIX):
            for code, at in _sites(table):
                problems.add(_function_at(code, at), f"uses the runtime constant {table.name[len(SHIFT_PREFIX):]} "
                                                     f"({table.name}): only the kernel's boot code patches it, and "
                                                     "a shift count cannot be read from memory in its place")
        elif table.name.startswith(PTR_PREFIX):
            name = table.name[len(PTR_PREFIX):]
            for code, at in _sites(table):
                _load_from_memory(patched, code, at - 2, name, problems)


def _sites(table: Section) -> list[tuple[Section, int]]:
    """(included code section, offset of the immediate) of each entry: `.long IMMEDIATE - .`."""
    sites = []
    for rel in table.relocations:
        code = rel.symbol.section
        if code is not None and code.included and code.is_text:
            sites.append((code, rel.symbol.value + rel.addend))
    return sites


def _function_at(code: Section, at: int) -> str:
    sym = code.symbol_at(at)
    return sym.name if sym is not None else code.name


def _load_from_memory(patched: ObjectFile, code: Section, start: int, name: str, problems: Problems) -> None:
    insn = code.data[start:start + _MOVABS_LEN]
    if len(insn) != _MOVABS_LEN or insn[0] not in (0x48, 0x49) or not 0xB8 <= insn[1] <= 0xBF:
        problems.add(_function_at(code, start), f"runtime constant {name} at {code.name}+{start + 2:#x} is not "
                                                "a movabs: unknown code layout")
        return
    reg = (insn[1] - 0xB8) | (8 if insn[0] & 1 else 0)  # REX.B extends the register in the opcode
    rex = 0x48 | (0x04 if reg & 8 else 0)  # REX.R extends it in ModRM.reg
    load = bytes([rex, 0x8B, (reg & 7) << 3 | 0b101]) + bytes(4) + NOP3  # ModRM 00 reg 101: RIP-relative
    code.data = code.data[:start] + load + code.data[start + _MOVABS_LEN:]
    target = next((s for s in patched.symbols if s.name == name and not s.is_defined), None)
    if target is None:
        target = Symbol(len(patched.symbols), name, STT_NOTYPE, STB_GLOBAL, 0, SHN_UNDEF, 0, 0)
        patched.symbols.append(target)
    field = start + _MOV_RIP_LEN - 4
    code.relocations = sorted(code.relocations + [Relocation(field, R_X86_64_PC32, target, -4)], key=lambda r: r.offset)
