"""x86-64 specifics of loading a patch: the patch's GOT and far-call stubs, the relocations applied, the redirect.

Each relocation type's size and formula are elfcore.x86_64's table; this module applies them to code placed in
a running process. Calls to code more than ±2 GB away (libc seen from a PIE executable) go through a stub
`jmp *0(%rip); .quad target`, as a PLT would; GOT-relative loads get a slot in the patch's own GOT.
"""
from __future__ import annotations

from patch_build.elfcore import x86_64 as arch
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
