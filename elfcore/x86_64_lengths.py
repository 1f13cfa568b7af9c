"""The length of each x86-64 instruction (64-bit mode), decoded from its prefixes, opcode and ModRM/SIB bytes.

The differ needs only where instructions end (a PC-relative field's target is counted from its instruction's
end), as create-diff-object uses the kernel's instruction decoder for it. A disassembly library does more and
costs more: capstone loads all eighteen of its architectures (9 MiB, more than three times a small unit's
objects), so the differ decodes lengths here and capstone is left to what shows instructions (reports, the
deployed-code comparison). The tables follow the Intel SDM's opcode maps (volume 2, appendix A) and AMD's for
XOP; tests check them against the GNU assembler and against capstone on compiled code.

An undecodable byte (an opcode invalid in 64-bit mode, an instruction longer than 15 bytes or cut off by the end
of the code) is one byte of data, as capstone's skip-data mode treats it, and decoding goes on after it.
"""
from __future__ import annotations

from typing import NamedTuple

MAX_LENGTH = 15  # the architecture's limit

# What follows an opcode: a kind of immediate, and whether a ModRM byte (and so maybe SIB and displacement) does.
NONE, IB, IW, IZ, IV, I4, IW_IB, MOFFS, TEST_IMM, REL8, REL32, INVALID = range(12)
MODRM = 16  # flag: a ModRM byte follows the opcode
MODRM_REG = 32  # flag: a ModRM byte whose mod field is ignored (moves to and from control and debug registers)
PREFIX, ESCAPE_0F, VEX2, VEX3, EVEX, XOP_OR_POP = 64, 65, 66, 67, 68, 69  # handled before the tables

_LEGACY_PREFIXES = (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3)


def _table(default: int, rows: dict[int, int]) -> bytes:
    table = [default] * 256
    for opcode, kind in rows.items():
        table[opcode] = kind
    return bytes(table)


def _span(first: int, last: int, kind: int) -> dict[int, int]:
    return {op: kind for op in range(first, last + 1)}


def _primary() -> bytes:
    rows: dict[int, int] = {}
    for base in range(0x00, 0x40, 0x08):  # add, or, adc, sbb, and, sub, xor, cmp: r/m forms, then AL/eAX, imm
        rows.update({base: MODRM, base + 1: MODRM, base + 2: MODRM, base + 3: MODRM, base + 4: IB, base + 5: IZ,
                     base + 6: INVALID, base + 7: INVALID})
    rows.update({prefix: PREFIX for prefix in _LEGACY_PREFIXES})
    rows[0x0F] = ESCAPE_0F
    rows.update(_span(0x40, 0x4F, PREFIX))  # REX
    rows.update(_span(0x50, 0x5F, NONE))  # push, pop
    rows.update({0x60: INVALID, 0x61: INVALID, 0x62: EVEX, 0x63: MODRM, 0x68: IZ, 0x69: MODRM | IZ, 0x6A: IB,
                 0x6B: MODRM | IB})
    rows.update(_span(0x6C, 0x6F, NONE))  # ins, outs
    rows.update(_span(0x70, 0x7F, REL8))  # jcc
    rows.update({0x80: MODRM | IB, 0x81: MODRM | IZ, 0x82: INVALID, 0x83: MODRM | IB})
    rows.update(_span(0x84, 0x8E, MODRM))
    rows[0x8F] = XOP_OR_POP
    rows.update(_span(0x90, 0x9F, NONE))
    rows[0x9A] = INVALID  # far call
    rows.update(_span(0xA0, 0xA3, MOFFS))
    rows.update(_span(0xA4, 0xAF, NONE))
    rows.update({0xA8: IB, 0xA9: IZ})
    rows.update(_span(0xB0, 0xB7, IB))
    rows.update(_span(0xB8, 0xBF, IV))
    rows.update({0xC0: MODRM | IB, 0xC1: MODRM | IB, 0xC2: IW, 0xC3: NONE, 0xC4: VEX3, 0xC5: VEX2,
                 0xC6: MODRM | IB, 0xC7: MODRM | IZ, 0xC8: IW_IB, 0xC9: NONE, 0xCA: IW, 0xCB: NONE, 0xCC: NONE,
                 0xCD: IB, 0xCE: INVALID, 0xCF: NONE})
    rows.update(_span(0xD0, 0xD3, MODRM))
    rows.update({0xD4: INVALID, 0xD5: INVALID, 0xD6: INVALID, 0xD7: NONE})
    rows.update(_span(0xD8, 0xDF, MODRM))  # x87
    rows.update(_span(0xE0, 0xE3, REL8))  # loop, jrcxz
    rows.update(_span(0xE4, 0xE7, IB))  # in, out
    rows.update({0xE8: REL32, 0xE9: REL32, 0xEA: INVALID, 0xEB: REL8})  # near call and jmp: rel32 whatever the prefix
    rows.update(_span(0xEC, 0xEF, NONE))
    rows.update({0xF1: NONE, 0xF4: NONE, 0xF5: NONE, 0xF6: MODRM | TEST_IMM, 0xF7: MODRM | TEST_IMM})
    rows.update(_span(0xF8, 0xFD, NONE))
    rows.update({0xFE: MODRM, 0xFF: MODRM})
    return _table(INVALID, rows)


def _map_0f() -> bytes:
    rows: dict[int, int] = {0x00: MODRM, 0x01: MODRM, 0x02: MODRM, 0x03: MODRM, 0x05: NONE, 0x06: NONE,
                            0x07: NONE, 0x08: NONE, 0x09: NONE, 0x0B: NONE, 0x0D: MODRM, 0x0E: NONE,
                            0x0F: MODRM | IB}  # 0F 0F: 3DNow!, its opcode after the operands
    rows.update(_span(0x10, 0x1F, MODRM))
    rows.update(_span(0x20, 0x23, MODRM_REG))
    rows.update(_span(0x28, 0x2F, MODRM))
    rows.update(_span(0x30, 0x37, NONE))
    rows[0x36] = INVALID
    rows.update(_span(0x40, 0x6F, MODRM))
    rows.update(_span(0x70, 0x73, MODRM | IB))
    rows.update({0x74: MODRM, 0x75: MODRM, 0x76: MODRM, 0x77: NONE, 0x78: MODRM, 0x79: MODRM})
    rows.update(_span(0x7C, 0x7F, MODRM))
    rows.update(_span(0x80, 0x8F, REL32))  # jcc
    rows.update(_span(0x90, 0x9F, MODRM))  # setcc
    rows.update({0xA0: NONE, 0xA1: NONE, 0xA2: NONE, 0xA3: MODRM, 0xA4: MODRM | IB, 0xA5: MODRM, 0xA8: NONE,
                 0xA9: NONE, 0xAA: NONE, 0xAB: MODRM, 0xAC: MODRM | IB, 0xAD: MODRM, 0xAE: MODRM, 0xAF: MODRM})
    rows.update(_span(0xB0, 0xBF, MODRM))
    rows[0xBA] = MODRM | IB
    rows.update(_span(0xC0, 0xC7, MODRM))
    rows.update({0xC2: MODRM | IB, 0xC4: MODRM | IB, 0xC5: MODRM | IB, 0xC6: MODRM | IB})
    rows.update(_span(0xC8, 0xCF, NONE))  # bswap
    rows.update(_span(0xD0, 0xFF, MODRM))
    return _table(INVALID, rows)


PRIMARY = _primary()
MAP_0F = _map_0f()
# VEX and EVEX opcode map 1 (0F): ModRM always (but vzeroupper/vzeroall), an imm8 on these.
_VEX_0F_IMM8 = frozenset((0x70, 0x71, 0x72, 0x73, 0xC2, 0xC4, 0xC5, 0xC6))


def _vex_kind(map_select: int, opcode: int, xop: bool) -> int:
    if xop:  # AMD's XOP maps 8, 9, 10: imm8, none, imm32
        return MODRM | {8: IB, 9: NONE, 10: I4}.get(map_select, INVALID)
    if map_select == 1:
        return NONE if opcode == 0x77 else MODRM | (IB if opcode in _VEX_0F_IMM8 else NONE)
    if map_select == 3:
        return MODRM | IB
    return MODRM if map_select in (2, 5, 6) else INVALID


class Instruction(NamedTuple):
    """One decoded instruction's layout, offsets from its first byte."""
    length: int  # 1 for an undecodable byte
    opcode_map: int  # 0 the one-byte map, 1 0F, 2 0F38, 3 0F3A; VEX, EVEX and XOP: their map number; -1 undecodable
    opcode: int
    modrm: int  # -1: none
    rex: int  # the REX prefix in effect, 0 for none
    operand16: bool  # an operand-size prefix (66)
    immediate_at: int  # where its immediate operand or branch displacement starts (== length: none)
    relative: bool  # what starts at immediate_at is a branch displacement

    @property
    def rip_relative(self) -> bool:
        """An operand at a displacement from the next instruction: its disp32 ends at `immediate_at`."""
        return self.modrm >= 0 and self.modrm & 0xC7 == 0x05 and not (
            self.opcode_map == 1 and MAP_0F[self.opcode] & MODRM_REG)


def _undecodable() -> Instruction:
    return Instruction(1, -1, -1, -1, 0, False, 1, False)


_IMMEDIATE_SIZES = {NONE: 0, IB: 1, IW: 2, I4: 4, IW_IB: 3, REL8: 1, REL32: 4}


def decode(code: bytes, start: int) -> Instruction:
    """The instruction at `start` of `code`."""
    end = len(code)
    p = start
    opsize16 = rep_f2 = addr32 = False
    rex = 0
    while True:
        if p >= end:
            return _undecodable()
        opcode = code[p]
        kind = PRIMARY[opcode]
        if kind != PREFIX:
            break
        if 0x40 <= opcode <= 0x4F:
            rex = opcode
        else:
            rex = 0  # a REX prefix counts only just before the opcode
            opsize16 = opsize16 or opcode == 0x66
            addr32 = addr32 or opcode == 0x67
            rep_f2 = rep_f2 or opcode == 0xF2
        p += 1
    p += 1
    opcode_map = 0
    rex_w = bool(rex & 0x08)
    if kind >= ESCAPE_0F:
        if p >= end:
            return _undecodable()
        if kind == ESCAPE_0F:
            opcode = code[p]
            p += 1
            opcode_map = 1
            if opcode in (0x38, 0x3A):
                if p >= end:
                    return _undecodable()
                kind = MODRM if opcode == 0x38 else MODRM | IB
                opcode_map = 2 if opcode == 0x38 else 3
                opcode = code[p]
                p += 1
            else:
                kind = MAP_0F[opcode]
                if opcode == 0x78 and (opsize16 or rep_f2):
                    kind = MODRM | IW  # extrq, insertq: two imm8 (vmread without the prefix)
        elif kind == XOP_OR_POP and code[p] & 0x1F < 8:
            kind = MODRM  # pop r/m: the ModRM's reg field is 0, which no XOP map number has
        else:
            if kind == VEX2:
                opcode_map, opcode_at = 1, p + 1
            elif kind == EVEX:
                opcode_map, opcode_at = code[p] & 0x07, p + 3
            else:
                opcode_map, opcode_at = code[p] & 0x1F, p + 2
                rex_w = p + 1 < end and bool(code[p + 1] & 0x80)
            if opcode_at >= end:
                return _undecodable()
            opcode = code[opcode_at]
            kind = _vex_kind(opcode_map, opcode, kind == XOP_OR_POP)
            p = opcode_at + 1
    modrm = -1
    if kind & (MODRM | MODRM_REG):
        if p >= end:
            return _undecodable()
        modrm = code[p]
        p += 1
        mod = modrm >> 6
        if mod != 3 and not kind & MODRM_REG:
            rm = modrm & 7
            if rm == 4:
                if p >= end:
                    return _undecodable()
                if mod == 0 and code[p] & 7 == 5:
                    p += 4
                p += 1
            elif mod == 0 and rm == 5:
                p += 4  # RIP-relative
            p += 1 if mod == 1 else 4 if mod == 2 else 0
        kind &= 15
        if kind == TEST_IMM:  # test r/m, imm: only /0 and /1 of F6 and F7 take one
            kind = NONE if modrm & 0x30 else IB if opcode == 0xF6 else IZ
    size = _IMMEDIATE_SIZES.get(kind)
    if size is None:
        if kind == IZ:
            size = 2 if opsize16 and not rex_w else 4
        elif kind == IV:
            size = 8 if rex_w else 2 if opsize16 else 4
        elif kind == MOFFS:
            size = 4 if addr32 else 8
        else:
            return _undecodable()
    length = p + size - start
    if length > MAX_LENGTH or p + size > end:
        return _undecodable()
    return Instruction(length, opcode_map, opcode, modrm, rex, opsize16, p - start, kind in (REL8, REL32))


def instruction_length(code: bytes, start: int) -> int:
    """The length of the instruction at `start`; 1 for an undecodable byte."""
    return decode(code, start).length
