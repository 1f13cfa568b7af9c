"""x86-64 facts of the differ's own: calls that take a source line number (the relocation table and the
instruction encodings are elfcore.x86_64's)."""
from __future__ import annotations

from dataclasses import dataclass

from patch_build.elfcore.x86_64_lengths import Instruction, decode

# Integer arguments in registers (System V ABI), by position: rdi, rsi, rdx, rcx, r8, r9 by their encoding.
ARGUMENT_REGISTERS = (7, 6, 2, 1, 8, 9)
_CALL_WINDOW = 8  # instructions between loading an argument and the call
_MOV_IMM32 = range(0xB8, 0xC0)  # mov $imm, %reg (the register in the opcode)
_MOV_RM_IMM = 0xC7  # mov $imm, r/m (/0)
_CALL, _JMP, _JMP8, _GROUP5 = 0xE8, 0xE9, 0xEB, 0xFF


@dataclass(frozen=True)
class ImmediateChange:
    """An instruction that differs between two builds only in an immediate operand."""
    old: int
    new: int
    register: int | None  # the register (by its encoding) a 32-bit `mov $imm, %reg` loads, else None
    next_call: str | None  # the function called within a few instructions after it (the same in both builds)


def _decoded(code: bytes) -> list[tuple[int, Instruction]]:
    out, at = [], 0
    while at < len(code):
        insn = decode(code, at)
        out.append((at, insn))
        at += insn.length
    return out


def immediate_changes(old: bytes, new: bytes, calls_old: dict[int, str],
                      calls_new: dict[int, str]) -> list[ImmediateChange] | None:
    """Where two same-size code bodies differ, when every differing instruction differs only in its immediate
    operand (the same operation on the same registers and memory); None otherwise. `calls_*`: relocation
    offset -> the symbol named there."""
    a, b = _decoded(old), _decoded(new)
    if [(at, insn.length) for at, insn in a] != [(at, insn.length) for at, insn in b]:
        return None
    changes = []
    for i, ((at, insn), (_, insn2)) in enumerate(zip(a, b)):
        end, imm = at + insn.length, at + insn.immediate_at
        if old[at:end] == new[at:end]:
            continue
        if insn != insn2 or insn.relative or insn.opcode_map < 0 or old[at:imm] != new[at:imm]:
            return None  # another operation or operand, or a branch elsewhere
        call = _next_call(old, a[i + 1:i + 1 + _CALL_WINDOW], calls_old)
        if call != _next_call(new, b[i + 1:i + 1 + _CALL_WINDOW], calls_new):
            return None
        changes.append(ImmediateChange(int.from_bytes(old[imm:end], "little"), int.from_bytes(new[imm:end], "little"),
                                       _loaded_register(insn), call))
    return changes


def _loaded_register(insn: Instruction) -> int | None:
    if insn.opcode_map != 0 or insn.operand16 or insn.rex & 0x08:
        return None
    extension = 8 if insn.rex & 0x01 else 0  # REX.B
    if insn.opcode in _MOV_IMM32:
        return extension | insn.opcode & 7
    if insn.opcode == _MOV_RM_IMM and insn.modrm >> 6 == 3 and insn.modrm & 0x38 == 0:
        return extension | insn.modrm & 7
    return None


def _next_call(code: bytes, insns: list[tuple[int, Instruction]], calls: dict[int, str]) -> str | None:
    """The function the first call or jump among `insns` reaches, if a relocation names it."""
    for at, insn in insns:
        if insn.opcode_map != 0:
            continue
        if insn.opcode in (_CALL, _JMP):
            return calls.get(at + insn.immediate_at)
        if insn.opcode == _JMP8 or insn.opcode == _GROUP5 and 2 <= (insn.modrm >> 3) & 7 <= 5:
            return None  # a short or indirect call or jump: no function named
    return None
