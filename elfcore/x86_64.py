"""x86-64 (System V psABI): each relocation type is one row carrying its number, size, formula, the bytes a
static linker may rewrite around it (relaxation) and how a reader is shown it; the instruction encodings the
differ and the loader share (the redirecting jump, endbr64) and the disassembler.

Formulas are the psABI's: S the symbol's address, A the addend, P the place, Z the symbol's size, G the
offset of the symbol's slot in the GOT, GOT the GOT's address.
"""
from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

from patch_build.elfcore.x86_64_lengths import instruction_length

R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32, R_X86_64_GOT32, R_X86_64_PLT32 = 0, 1, 2, 3, 4
R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT = 6, 7  # dynamic relocations of a linked binary
R_X86_64_GOTPCREL, R_X86_64_32, R_X86_64_32S, R_X86_64_16, R_X86_64_PC16, R_X86_64_8, R_X86_64_PC8 = 9, 10, 11, 12, \
    13, 14, 15
R_X86_64_TLSGD, R_X86_64_TLSLD, R_X86_64_DTPOFF32, R_X86_64_GOTTPOFF, R_X86_64_TPOFF32 = 19, 20, 21, 22, 23
R_X86_64_PC64, R_X86_64_GOTOFF64, R_X86_64_GOTPC32, R_X86_64_SIZE32, R_X86_64_SIZE64 = 24, 25, 26, 32, 33
R_X86_64_GOTPCRELX, R_X86_64_REX_GOTPCRELX = 41, 42


class UnsupportedRelocation(ValueError):
    """A relocation type with no formula here (thread-local storage) or not in the table."""


Formula = Callable[..., int]  # keyword arguments S, A, P, Z, G, GOT
_ABSOLUTE: Formula = lambda S, A, **_: S + A  # noqa: E731
_PC_RELATIVE: Formula = lambda S, A, P, **_: S + A - P  # noqa: E731


@dataclass(frozen=True)
class RelocType:
    number: int
    name: str
    size: int  # bytes patched at the relocation site
    formula: Formula | None  # None: not applied by this project (thread-local storage)
    pc_relative: bool = False  # the field is relative to its own address (the CPU's: to the next instruction)
    got: bool = False  # refers to the symbol's GOT slot
    signed: bool = True  # an absolute value must fit a signed field (else unsigned)
    # Bytes around the field a static linker may rewrite when it relaxes the access, as (before, after) the
    # field: GOTPCRELX turns `call *foo@GOTPCREL` into `addr32 call foo` and `mov foo@GOTPCREL` into `lea`,
    # changing the opcode (and REX) bytes; TLS accesses are relaxed as whole instruction sequences.
    relaxed: tuple[int, int] = (0, 0)
    relaxes_to: int | None = None  # the direct relocation a relaxed GOT load becomes
    data_address: bool = False  # a direct reference to an address (GOT and TLS accesses name their symbol)

    @property
    def is_tls(self) -> bool:
        return self.formula is None

    @property
    def display_suffix(self) -> str:
        """How a reader sees the access: `foo@GOTPCREL` goes through the GOT, a plain `foo` does not."""
        return "@" + self.name.removeprefix("R_X86_64_") if self.got else ""

    def value(self, *, S: int, A: int, P: int = 0, Z: int = 0, G: int = 0, GOT: int = 0) -> int:
        if self.formula is None:
            raise UnsupportedRelocation(f"thread-local storage relocation {self.name} is not supported")
        return self.formula(S=S, A=A, P=P, Z=Z, G=G, GOT=GOT)

    def fits(self, value: int) -> bool:
        bits = self.size * 8
        if not bits:
            return True  # R_X86_64_NONE writes nothing
        if self.signed or self.pc_relative:
            return -(1 << (bits - 1)) <= value < (1 << (bits - 1)) or (bits == 64 and 0 <= value < (1 << 64))
        return 0 <= value < (1 << bits)

    def encode(self, value: int) -> bytes:
        """The field's bytes; ValueError when `value` does not fit."""
        if not self.fits(value):
            raise ValueError(f"{self.name} value {value:#x} does not fit in {self.size * 8} bits")
        return (value & ((1 << (self.size * 8)) - 1)).to_bytes(self.size, "little")


_GOT_SLOT: Formula = lambda G, A, **_: G + A  # noqa: E731
_GOT_SLOT_PC: Formula = lambda G, GOT, A, P, **_: G + GOT + A - P  # noqa: E731
_TYPES = [
    RelocType(R_X86_64_NONE, "R_X86_64_NONE", 0, _ABSOLUTE),
    RelocType(R_X86_64_64, "R_X86_64_64", 8, _ABSOLUTE, data_address=True),
    RelocType(R_X86_64_PC32, "R_X86_64_PC32", 4, _PC_RELATIVE, pc_relative=True, data_address=True),
    RelocType(R_X86_64_GOT32, "R_X86_64_GOT32", 4, _GOT_SLOT, got=True),
    RelocType(R_X86_64_PLT32, "R_X86_64_PLT32", 4, _PC_RELATIVE, pc_relative=True),
    RelocType(R_X86_64_GOTPCREL, "R_X86_64_GOTPCREL", 4, _GOT_SLOT_PC, pc_relative=True, got=True, relaxed=(2, 0),
              relaxes_to=R_X86_64_PC32),
    RelocType(R_X86_64_32, "R_X86_64_32", 4, _ABSOLUTE, signed=False, data_address=True),
    RelocType(R_X86_64_32S, "R_X86_64_32S", 4, _ABSOLUTE, data_address=True),
    RelocType(R_X86_64_16, "R_X86_64_16", 2, _ABSOLUTE, signed=False),
    RelocType(R_X86_64_PC16, "R_X86_64_PC16", 2, _PC_RELATIVE, pc_relative=True),
    RelocType(R_X86_64_8, "R_X86_64_8", 1, _ABSOLUTE, signed=False),
    RelocType(R_X86_64_PC8, "R_X86_64_PC8", 1, _PC_RELATIVE, pc_relative=True),
    RelocType(R_X86_64_TLSGD, "R_X86_64_TLSGD", 4, None, pc_relative=True, relaxed=(4, 8)),  # leaq + call
    RelocType(R_X86_64_TLSLD, "R_X86_64_TLSLD", 4, None, pc_relative=True, relaxed=(3, 5)),  # leaq + call
    RelocType(R_X86_64_DTPOFF32, "R_X86_64_DTPOFF32", 4, None),
    RelocType(R_X86_64_GOTTPOFF, "R_X86_64_GOTTPOFF", 4, None, pc_relative=True, relaxed=(3, 0)),
    RelocType(R_X86_64_TPOFF32, "R_X86_64_TPOFF32", 4, None),
    RelocType(R_X86_64_PC64, "R_X86_64_PC64", 8, _PC_RELATIVE, pc_relative=True),
    RelocType(R_X86_64_GOTOFF64, "R_X86_64_GOTOFF64", 8, lambda S, A, GOT, **_: S + A - GOT),
    RelocType(R_X86_64_GOTPC32, "R_X86_64_GOTPC32", 4, lambda GOT, A, P, **_: GOT + A - P, pc_relative=True),
    RelocType(R_X86_64_SIZE32, "R_X86_64_SIZE32", 4, lambda Z, A, **_: Z + A),
    RelocType(R_X86_64_SIZE64, "R_X86_64_SIZE64", 8, lambda Z, A, **_: Z + A),
    RelocType(R_X86_64_GOTPCRELX, "R_X86_64_GOTPCRELX", 4, _GOT_SLOT_PC, pc_relative=True, got=True,
              relaxed=(2, 0), relaxes_to=R_X86_64_PC32),
    RelocType(R_X86_64_REX_GOTPCRELX, "R_X86_64_REX_GOTPCRELX", 4, _GOT_SLOT_PC, pc_relative=True, got=True,
              relaxed=(3, 0), relaxes_to=R_X86_64_PC32),
]
RELOC_TYPES = {t.number: t for t in _TYPES}


def reloc_type(number: int) -> RelocType:
    try:
        return RELOC_TYPES[number]
    except KeyError:
        raise UnsupportedRelocation(f"unsupported x86-64 relocation type {number}") from None


def is_branch_like(rtype: RelocType) -> bool:
    """S + A - P: a call, a jump or a RIP-relative reference, which a far-call stub can stand in for."""
    return rtype.formula is _PC_RELATIVE


# Redirecting an old function: `jmp rel32`, after an `endbr64` landing pad when there is one.
JMP_REL32_SIZE = 5
ENDBR64 = bytes.fromhex("f30f1efa")
LEA, CALL_REL32, JMP_REL32 = 0x8D, 0xE8, 0xE9  # opcodes a relaxed GOT load leaves behind


def jmp_rel32(from_addr: int, to_addr: int) -> bytes:
    disp = to_addr - (from_addr + JMP_REL32_SIZE)
    if not -(1 << 31) <= disp < (1 << 31):
        raise ValueError(f"jump from {from_addr:#x} to {to_addr:#x} is out of rel32 range")
    return bytes([JMP_REL32]) + disp.to_bytes(4, "little", signed=True)


def redirect_offset(code: bytes) -> int:
    """Where the redirecting jump goes in a function: after its endbr64, if it starts with one."""
    return len(ENDBR64) if code.startswith(ENDBR64) else 0


def min_redirect_size(code: bytes) -> int:
    return redirect_offset(code) + JMP_REL32_SIZE


SKIPPED_DATA = ".byte"  # the mnemonic the disassembler gives an undecodable byte


@lru_cache(maxsize=1)
def disassembler():
    """capstone's x86-64 disassembler, for what shows or compares instructions (lengths alone are
    `instruction_bounds`': loading capstone costs more memory than the differ's inputs); undecodable bytes are
    skipped as data rather than ending the disassembly."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    return md


class InstructionBounds(NamedTuple):
    """Where each instruction of some code starts and ends, in order: two arrays of machine integers, as a
    kernel unit's tens of thousands of instructions take megabytes as a list of tuples."""
    starts: array
    ends: array


def instruction_bounds(code: bytes) -> InstructionBounds:
    """The bounds of each instruction of a function's code, decoded linearly."""
    starts, ends = array("q"), array("q")
    at, size = 0, len(code)
    while at < size:
        starts.append(at)
        at += instruction_length(code, at)
        ends.append(at)
    return InstructionBounds(starts, ends)


def pc_relative_bias(code_insns: InstructionBounds, reloc_offset: int, size: int) -> int:
    """How far the instruction's end lies past a PC-relative field: target = S + A + bias.

    The CPU adds a displacement to the address of the next instruction, so an assembler writes
    `A = target - field_end - (bytes of immediate after the field)`. Usually the bias is the field
    size; it is larger when an immediate follows the displacement (`movl $1, x(%rip)`).
    """
    i = bisect.bisect_right(code_insns.starts, reloc_offset) - 1
    if i >= 0:
        start, end = code_insns.starts[i], code_insns.ends[i]
        if start <= reloc_offset < end:
            return end - reloc_offset
    return size
