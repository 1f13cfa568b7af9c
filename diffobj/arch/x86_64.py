"""x86-64 facts of the differ's own: calls that take a source line number (the relocation table and the
instruction encodings are elfcore.x86_64's)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from patch_build.elfcore.x86_64 import disassembler

# Integer arguments in registers (System V ABI), by position, as a 32-bit value (a line number) loads them.
ARGUMENT_REGISTERS = ("edi", "esi", "edx", "ecx", "r8d", "r9d")
_CALL_WINDOW = 8  # instructions between loading an argument and the call
_NUMBER = re.compile(r"^-?(0x[0-9a-f]+|\d+)$")


@dataclass(frozen=True)
class ImmediateChange:
    """An instruction that differs between two builds only in an immediate operand."""
    old: int
    new: int
    register: str | None  # the register a `mov $imm, %reg` loads, else None
    next_call: str | None  # the function called within a few instructions after it (the same in both builds)


def immediate_changes(old: bytes, new: bytes, calls_old: dict[int, str],
                      calls_new: dict[int, str]) -> list[ImmediateChange] | None:
    """Where two same-size code bodies differ, when every differing instruction differs only in immediate
    operands (the same operation on the same registers and memory); None otherwise. `calls_*`: relocation
    offset -> the symbol named there."""
    md = disassembler()
    a, b = list(md.disasm_lite(old, 0)), list(md.disasm_lite(new, 0))
    if len(a) != len(b):
        return None
    changes = []
    for i, ((addr, size, mnem, ops), (addr2, size2, mnem2, ops2)) in enumerate(zip(a, b)):
        if old[addr:addr + size] == new[addr2:addr2 + size2]:
            continue
        operands, operands2 = ops.split(", "), ops2.split(", ")
        if (addr, size, mnem) != (addr2, size2, mnem2) or len(operands) != len(operands2):
            return None
        call = _next_call(a[i + 1:i + 1 + _CALL_WINDOW], calls_old)
        if call != _next_call(b[i + 1:i + 1 + _CALL_WINDOW], calls_new):
            return None
        for x, y in zip(operands, operands2):
            if x == y:
                continue
            if not (_NUMBER.match(x) and _NUMBER.match(y)):
                return None
            register = operands[0] if mnem == "mov" and len(operands) == 2 and not _NUMBER.match(operands[0]) \
                and "[" not in operands[0] else None
            changes.append(ImmediateChange(int(x, 0), int(y, 0), register, call))
    return changes


def _next_call(insns, calls: dict[int, str]) -> str | None:
    for addr, _, mnem, _ in insns:
        if mnem in ("call", "jmp"):
            return calls.get(addr + 1)
    return None
