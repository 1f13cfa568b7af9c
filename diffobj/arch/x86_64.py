"""x86-64: relocation types, instruction facts and the jump used to redirect a function."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

E_MACHINE = 62


@dataclass(frozen=True)
class RelocType:
    number: int
    name: str
    size: int  # bytes patched at the relocation site
    pc_relative: bool
    got: bool = False  # needs a GOT entry
    signed: bool = True  # value must fit a signed field (else unsigned)


_TYPES = [
    RelocType(0, "R_X86_64_NONE", 0, False),
    RelocType(1, "R_X86_64_64", 8, False),
    RelocType(2, "R_X86_64_PC32", 4, True),
    RelocType(3, "R_X86_64_GOT32", 4, False, got=True),
    RelocType(4, "R_X86_64_PLT32", 4, True),
    RelocType(9, "R_X86_64_GOTPCREL", 4, True, got=True),
    RelocType(10, "R_X86_64_32", 4, False, signed=False),
    RelocType(11, "R_X86_64_32S", 4, False),
    RelocType(12, "R_X86_64_16", 2, False, signed=False),
    RelocType(13, "R_X86_64_PC16", 2, True),
    RelocType(14, "R_X86_64_8", 1, False, signed=False),
    RelocType(15, "R_X86_64_PC8", 1, True),
    RelocType(19, "R_X86_64_TLSGD", 4, True),
    RelocType(20, "R_X86_64_TLSLD", 4, True),
    RelocType(21, "R_X86_64_DTPOFF32", 4, False),
    RelocType(22, "R_X86_64_GOTTPOFF", 4, True),
    RelocType(23, "R_X86_64_TPOFF32", 4, False),
    RelocType(24, "R_X86_64_PC64", 8, True),
    RelocType(25, "R_X86_64_GOTOFF64", 8, False),
    RelocType(26, "R_X86_64_GOTPC32", 4, True),
    RelocType(32, "R_X86_64_SIZE32", 4, False),
    RelocType(33, "R_X86_64_SIZE64", 8, False),
    RelocType(41, "R_X86_64_GOTPCRELX", 4, True, got=True),
    RelocType(42, "R_X86_64_REX_GOTPCRELX", 4, True, got=True),
]
RELOC_TYPES = {t.number: t for t in _TYPES}
R_64, R_PC32, R_PLT32 = 1, 2, 4


def reloc_type(number: int) -> RelocType:
    try:
        return RELOC_TYPES[number]
    except KeyError:
        raise ValueError(f"unsupported x86-64 relocation type {number}") from None


# Redirecting an old function: `jmp rel32`, after an `endbr64` landing pad when there is one.
JMP_REL32_SIZE = 5
ENDBR64 = bytes.fromhex("f30f1efa")


def jmp_rel32(from_addr: int, to_addr: int) -> bytes:
    disp = to_addr - (from_addr + JMP_REL32_SIZE)
    if not -(1 << 31) <= disp < (1 << 31):
        raise ValueError(f"jump from {from_addr:#x} to {to_addr:#x} is out of rel32 range")
    return b"\xe9" + disp.to_bytes(4, "little", signed=True)


def redirect_offset(code: bytes) -> int:
    """Where the redirecting jump goes in a function: after its endbr64, if it starts with one."""
    return len(ENDBR64) if code.startswith(ENDBR64) else 0


def min_redirect_size(code: bytes) -> int:
    return redirect_offset(code) + JMP_REL32_SIZE


@lru_cache(maxsize=1)
def _disassembler():
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    return md


def instruction_ends(code: bytes) -> list[tuple[int, int]]:
    """(start, end) of each instruction of a function's code, decoded linearly."""
    return [(a, a + n) for a, n, _, _ in _disassembler().disasm_lite(code, 0)]


def pc_relative_bias(code_insns: list[tuple[int, int]], reloc_offset: int, size: int) -> int:
    """How far the instruction's end lies past a PC-relative field: target = S + A + bias.

    The CPU adds a displacement to the address of the next instruction, so an assembler writes
    `A = target - field_end - (bytes of immediate after the field)`. Usually the bias is the field
    size; it is larger when an immediate follows the displacement (`movl $1, x(%rip)`).
    """
    import bisect

    i = bisect.bisect_right(code_insns, (reloc_offset, 1 << 62)) - 1
    if i >= 0:
        start, end = code_insns[i]
        if start <= reloc_offset < end:
            return end - reloc_offset
    return size


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
    if not any(name in LINE_PARAMETER_REGISTER for name in call_targets_new.values()):
        return False  # no call that takes a line number: no need to disassemble (nor import capstone)
    md = _disassembler()
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
