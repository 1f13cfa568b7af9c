"""x86-64 specifics of loading a patch: relocation formulas, the patch's GOT and far-call stubs, the redirect.

The relocation table and the jump encoding are the differ's (`diffobj.arch.x86_64`); this module applies
them to code placed in a running process. Calls to code more than ±2 GB away (libc seen from a PIE
executable) go through a stub `jmp *0(%rip); .quad target`, as a PLT would; GOT-relative loads get a slot in
the patch's own GOT.
"""
from __future__ import annotations

from diffobj.arch import x86_64 as arch
from diffobj.arch.x86_64 import JMP_REL32_SIZE, jmp_rel32, min_redirect_size, redirect_offset  # noqa: F401

GOT_ENTRY_SIZE = 8
STUB_SIZE = 16
R_GOTPC32, R_GOTOFF64, R_SIZE32, R_SIZE64 = 26, 25, 32, 33
SHT_UNWIND = 0x70000001  # SHT_X86_64_UNWIND: how gcc types .eh_frame in objects (ld -r makes it PROGBITS)


class RelocationError(Exception):
    pass


def needs_got_slot(rtype: int) -> bool:
    return arch.reloc_type(rtype).got


def may_need_stub(rtype: int, is_function: bool) -> bool:
    """A call or jump (PLT32; PC32 to a function) to code that may lie beyond ±2 GB."""
    return rtype == arch.R_PLT32 or (rtype == arch.R_PC32 and is_function)


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
    if info.got:
        if rtype == 3:  # R_X86_64_GOT32: offset of the slot within the GOT
            value = got_slot - got + A
        else:
            value = got_slot + A - P
    elif rtype == R_GOTPC32:
        value = got + A - P
    elif rtype == R_GOTOFF64:
        value = S + A - got
    elif rtype in (R_SIZE32, R_SIZE64):
        value = Z + A
    elif info.number in (19, 20, 21, 22, 23):
        raise RelocationError(f"{what}: thread-local storage relocation {info.name} is not supported")
    elif info.pc_relative:
        value = S + A - P
        if info.size == 4 and not fits_rel32(value) and stub is not None:
            value = stub + A - P
    else:
        value = S + A
    if info.size == 0:
        return
    bits = info.size * 8
    if info.signed or info.pc_relative:
        ok = -(1 << (bits - 1)) <= value < (1 << (bits - 1)) or (bits == 64 and 0 <= value < (1 << 64))
    else:
        ok = 0 <= value < (1 << bits)
    if not ok:
        raise RelocationError(f"{what}: {info.name} value {value:#x} does not fit in {bits} bits")
    buf[offset:offset + info.size] = (value & ((1 << bits) - 1)).to_bytes(info.size, "little")


def redirect(site_code: bytes, old_addr: int, new_addr: int) -> tuple[int, bytes]:
    """Where in the old function the redirecting jump goes (after an endbr64) and its bytes."""
    at = old_addr + redirect_offset(site_code)
    return at, jmp_rel32(at, new_addr)
