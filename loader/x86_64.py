"""x86-64 specifics of loading a patch: the patch's GOT and far-call stubs, the relocations applied, the redirect,
the trap that holds a new process at its entry point.

Each relocation type's size and formula are elfcore.x86_64's table; this module applies them to code placed in
a running process. Calls to code more than ±2 GB away (libc seen from a PIE executable) go through a stub
`jmp *0(%rip); .quad target`, as a PLT would; GOT-relative loads get a slot in the patch's own GOT.
"""
from __future__ import annotations

from typing import NamedTuple

from patch_build.elfcore import x86_64 as arch
from patch_build.elfcore.x86_64_lengths import decode
from patch_build.elfcore.x86_64 import JMP_REL32_SIZE, jmp_rel32, min_redirect_size, redirect_offset  # noqa: F401

GOT_ENTRY_SIZE = 8
STUB_SIZE = 16


class RelocationError(Exception):
    pass


def needs_got_slot(rtype: int) -> bool:
    return arch.reloc_type(rtype).got


def may_need_stub(rtype: int, is_function: bool) -> bool:
    """A call or jump (PLT32; PC32 to a function) to code that may lie beyond ±2 GB."""
    return rtype == arch.R_X86_64_PLT32 or (rtype == arch.R_X86_64_PC32 and is_function)


def far_stub(target: int) -> bytes:
    """jmp *0(%rip) followed by the absolute target, padded to STUB_SIZE with int3."""
    return (b"\xff\x25\x00\x00\x00\x00" + target.to_bytes(8, "little")).ljust(STUB_SIZE, b"\xcc")


def fits_rel32(value: int) -> bool:
    return -(1 << 31) <= value < (1 << 31)


def apply(buf: bytearray, offset: int, rtype: int, *, S: int, A: int, P: int, Z: int = 0,
          got_slot: int | None = None, got: int = 0, stub: int | None = None, what: str = "") -> None:
    """Write the relocated field at `offset` of `buf` (which is loaded at P - offset).

    S symbol address, A addend, P place, Z symbol size, got_slot the address of S's slot in the patch GOT,
    got the GOT's address, stub the address of a far-call stub to S (used when S is out of rel32 range).
    """
    info = arch.reloc_type(rtype)
    G = got_slot - got if info.got else 0
    try:
        value = info.value(S=S, A=A, P=P, Z=Z, G=G, GOT=got)
        if arch.is_branch_like(info) and info.size == 4 and not fits_rel32(value) and stub is not None:
            value = info.value(S=stub, A=A, P=P)
        buf[offset:offset + info.size] = info.encode(value)
    except ValueError as e:
        raise RelocationError(f"{what}: {e}") from None


def redirect(site_code: bytes, old_addr: int, new_addr: int) -> tuple[int, bytes]:
    """Where in the old function the redirecting jump goes (after an endbr64) and its bytes."""
    at = old_addr + redirect_offset(site_code)
    return at, jmp_rel32(at, new_addr)


# ---- the entry trap (loader.entry) -----------------------------------------------------------------------
# A jump at a program's entry point to a stub that sends its own thread a signal whose default action is to
# ignore it, then runs the instructions the jump displaced (moved) and jumps back after them. A tracer sees the
# thread stop with the signal just past the stub's syscall; without one (a daemon killed meanwhile) the signal
# is ignored and the program runs on as if nothing had been written, where an int3 would kill it.
SYS_TGKILL = 234
SYSCALL = b"\x0f\x05"
ENTRY_SAVED = ("rax", "rdi", "rsi", "rdx", "rcx", "r11")  # pushed in this order by the stub: what it changes
_PUSH = {"rax": b"\x50", "rdi": b"\x57", "rsi": b"\x56", "rdx": b"\x52", "rcx": b"\x51", "r11": b"\x41\x53"}
_POP = {"rax": b"\x58", "rdi": b"\x5f", "rsi": b"\x5e", "rdx": b"\x5a", "rcx": b"\x59", "r11": b"\x41\x5b"}
_MOV_IMM32 = {"eax": 0xB8, "edx": 0xBA, "esi": 0xBE, "edi": 0xBF}  # mov $imm32, %reg


class EntryTrap(NamedTuple):
    jump: bytes  # written over the entry point's first instructions
    stub: bytes  # the code at the stub's address
    stop_at: int  # where the thread stops with the signal: just past the stub's syscall


def _mov(register: str, value: int) -> bytes:
    return bytes([_MOV_IMM32[register]]) + value.to_bytes(4, "little")


def entry_trap(entry: int, code: bytes, stub: int, pid: int, signo: int) -> EntryTrap | None:
    """The trap for the program entry point `entry` whose first bytes are `code`, its stub at `stub` sending
    `signo` to thread `pid` (the main thread, whose id is the process's); None when the instructions the jump
    covers cannot run elsewhere (a short branch, an undecodable byte) or `stub` is out of rel32 reach."""
    head = b"".join(_PUSH[r] for r in ENTRY_SAVED) + _mov("edi", pid) + _mov("esi", pid) + _mov("edx", signo) \
        + _mov("eax", SYS_TGKILL) + SYSCALL
    tail = b"".join(_POP[r] for r in reversed(ENTRY_SAVED))
    moved_at = stub + len(head) + len(tail)
    moved = move_instructions(code, entry, moved_at, JMP_REL32_SIZE)
    if moved is None:
        return None
    body, length = moved
    try:
        return EntryTrap(jmp_rel32(entry, stub), head + tail + body + jmp_rel32(moved_at + len(body), entry + length),
                         stub + len(head))
    except ValueError:  # out of rel32 reach
        return None


def move_instructions(code: bytes, at: int, to: int, cover: int) -> tuple[bytes, int] | None:
    """The first instructions of `code` (at address `at`) covering at least `cover` bytes, rewritten to run at
    `to` (rel32 branches and RIP-relative operands keep their targets), and how many bytes of `code` they
    take; None when one cannot be moved."""
    out, offset = bytearray(), 0
    while offset < cover:
        if offset >= len(code):
            return None
        insn = decode(code, offset)
        if insn.opcode_map < 0:
            return None
        raw = bytearray(code[offset:offset + insn.length])
        field = None
        if insn.relative:
            if insn.length - insn.immediate_at != 4:
                return None  # a rel8 branch: seldom in reach of the stub
            field = insn.immediate_at
        elif insn.rip_relative:
            field = insn.immediate_at - 4  # the disp32 ends where the immediate starts
        if field is not None:
            old = int.from_bytes(raw[field:field + 4], "little", signed=True)
            target = at + offset + insn.length + old
            new = target - (to + len(out) + insn.length)
            if not fits_rel32(new):
                return None
            raw[field:field + 4] = new.to_bytes(4, "little", signed=True)
        out += raw
        offset += insn.length
    return bytes(out), offset
