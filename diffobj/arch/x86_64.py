"""x86-64 facts of the differ's own: calls that take a source line number (the relocation table and the
instruction encodings are elfcore.x86_64's)."""
from __future__ import annotations

from elfcore.x86_64 import disassembler

# Functions with a line-number parameter, and the register that carries it (System V ABI): a patch
# that adds lines above a caller shifts the immediate it passes without changing what it does.
LINE_PARAMETER_REGISTER = {
    "__might_sleep": "esi", "___might_sleep": "esi", "__might_resched": "esi", "__might_fault": "esi",
    "lockdep_rcu_suspicious": "esi", "__assert_fail": "edx", "__assert_perror_fail": "edx",
}
_LINE_CALL_WINDOW = 8  # instructions between loading the line number and the call


def only_line_numbers_differ(old: bytes, new: bytes, call_targets_old: dict[int, str],
                             call_targets_new: dict[int, str]) -> bool:
    """True when two same-size function bodies differ only in `mov $imm, %reg` that load the line
    argument of a following call to a function with a line parameter. `call_targets_*`: relocation
    offset -> symbol name."""
    md = disassembler()
    a, b = list(md.disasm_lite(old, 0)), list(md.disasm_lite(new, 0))
    if len(a) != len(b):
        return False
    differing = 0
    for i, ((addr, size, mnem, ops), (addr2, size2, mnem2, ops2)) in enumerate(zip(a, b)):
        if old[addr:addr + size] == new[addr2:addr2 + size2]:
            continue
        if (addr, size, mnem) != (addr2, size2, "mov") or mnem != "mov":
            return False
        reg, src = ops.split(", ")[0], ops.split(", ")[-1]
        reg2, src2 = ops2.split(", ")[0], ops2.split(", ")[-1]
        if reg != reg2 or not (src.startswith("0x") or src.isdigit()) or not (src2.startswith("0x") or src2.isdigit()):
            return False
        if _line_register_of_next_call(a[i + 1:i + 1 + _LINE_CALL_WINDOW], call_targets_old) != reg or \
                _line_register_of_next_call(b[i + 1:i + 1 + _LINE_CALL_WINDOW], call_targets_new) != reg:
            return False
        differing += 1
    return differing > 0


def _line_register_of_next_call(insns, call_targets: dict[int, str]) -> str | None:
    for addr, _, mnem, _ in insns:
        if mnem in ("call", "jmp"):
            return LINE_PARAMETER_REGISTER.get(call_targets.get(addr + 1, ""))
    return None
