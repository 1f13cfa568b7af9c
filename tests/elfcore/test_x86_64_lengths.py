"""elfcore.x86_64_lengths, the differ's instruction-length decoder, against the GNU assembler (one instruction of
each form the tables distinguish, its length as `as` wrote it) and against capstone on code gcc compiled with
each instruction-set level up to AVX-512."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import capstone
import pytest

from patch_build.elfcore.x86_64 import instruction_bounds
from patch_build.elfcore.x86_64_lengths import decode, instruction_length

# One per decoding path: prefixes and REX, each immediate size and how 66/REX.W/67 change it, ModRM with SIB and
# each displacement (RIP-relative with an immediate after it), the 0F, 0F38 and 0F3A maps, VEX (2 and 3 bytes),
# EVEX, XOP, 3DNow!, branches, and the opcodes whose form depends on a ModRM field or a prefix.
INSTRUCTIONS = """
movl $1, 0x10(%rip); movw $1, 0x10(%rip); movq $-1, 0x10(%rip); shll $3, 0x10(%rip); movb $1, %al
movabsq $0x1122334455667788, %rax; movabs 0x1122334455667788, %eax; addr32 movabs 0x11223344, %eax
movw $0x1234, %ax; mov $0x12345678, %r9d; mov 0x11223344, %eax; mov %fs:0x28, %rax; rex64 mov %eax, %ecx
testb $1, (%rax); testl $0x1000, 8(%rsp,%rbx,4); testw $0x10, %cx; notl (%rax); negq 0x100(%rbx)
enter $0x10, $0; ret $8; mov %cr3, %rax; mov %rax, %db7; extrq $4, $8, %xmm1; insertq $4, $8, %xmm2, %xmm1
vmread %rax, (%rbx); fldl 8(%rsp); fstp %st(1)
jne 0b; jne .+0x200; call 0b; jmp 0b; jmp .+0x300; xbegin 0b; 1: loop 1b; 2: jrcxz 2b
lock cmpxchgq %rcx, (%rdx); rep movsb; endbr64; serialize; ud1 %esp, %ecx; ud2
pshufd $0x1b, %xmm0, %xmm1; pshufb %xmm1, %xmm2; palignr $4, (%rax), %xmm2; vpshufd $0x1b, %ymm0, %ymm1
vzeroupper; vpaddd %ymm1, %ymm2, %ymm3; vpermq $0x4e, %ymm1, %ymm2; vpaddd %zmm1, %zmm2, %zmm3{%k1}
vpternlogd $0x96, 0x40(%rax), %zmm1, %zmm2; vpshufd $1, 0x100(%rip), %zmm3; vaddph %zmm1, %zmm2, %zmm3
vprotd $3, %xmm1, %xmm2; vpcmov %xmm1, %xmm2, %xmm3, %xmm4; bextr $0x1234, %eax, %ecx
popq (%rax); pop %r12; push $0x12345678; pushw $0x1234; imul $0x12345678, %eax, %ecx; imul $3, %eax, %ecx
btl $5, (%rax); shldl $4, %eax, (%rbx); cmpps $1, %xmm1, %xmm2; pinsrw $2, %eax, %xmm1; pextrw $2, %xmm1, %eax
shufps $1, %xmm1, %xmm2; crc32b %al, %ecx; movbe (%rax), %ecx; sha256rnds2 %xmm0, %xmm1, %xmm2
aesenc %xmm1, %xmm2; pclmulqdq $0x11, %xmm1, %xmm2; rdrand %eax; cpuid; syscall; wrmsr; swapgs
in $0x60, %al; out %al, $0x80; int $0x80; int3; cs nopw 0x0(%rax,%rax,1)
.byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
lea 0x12345678(,%rax,8), %rcx; lea 0x12(%rbp,%rax,8), %rcx; mov (%r13), %eax; mov (%r12), %eax
movq %xmm0, %rax; cmovne %rax, %rcx; setne %al; movzbl (%rax), %ecx; popcnt %eax, %ecx; andnl %eax, %ebx, %ecx
rorxl $3, %eax, %ecx; kmovw %k1, %eax; vcvtps2ph $0, %ymm1, (%rax); prefetcht0 (%rax); clflush (%rax); mfence
xchg %ax, %ax; cwtl; hlt; xabort $1; femms; pfadd %mm1, %mm2; vpaddw %xmm1, %xmm2, %xmm3
vgatherdps %ymm0, (%rax,%ymm1,4), %ymm2; vpscatterdd %zmm1, 8(%rax,%zmm2,4){%k1}; tpause %eax; wrpkru; clac
vmcall; monitor; invpcid (%rax), %rax; cmpxchg16b (%rax); lfence; pause; nop
"""

# Loops gcc vectorizes, calls, a switch, floating point, bit tricks: the instruction mix of real code.
PROGRAM = r"""
#include <stdio.h>
#include <string.h>
float dot(const float *a, const float *b, int n)
{ float s = 0; for (int i = 0; i < n; i++) s += a[i] * b[i]; return s; }
void scale(int *x, short *y, int n, int k) { for (int i = 0; i < n; i++) x[i] = x[i] * k + y[i] * 3; }
unsigned bits(unsigned long v) { return __builtin_popcountl(v) + __builtin_ctzl(v | 1) + (unsigned)(v >> 7); }
double mix(double a, long b) { return a / (double)b + (a > 1.5 ? 2.25 : -0.5); }
int pick(int c, const char *s) {
    switch (c) { case 0: return puts(s); case 1: return (int)strlen(s); case 2: return s[3];
                 case 3: return printf("%s %d\n", s, c); case 4: return c * 77; default: return -1; }
}
static long counter;
long bump(char small, unsigned short mid) { counter += small; return counter ^ (mid * 0x12345L); }
"""


def _split(source: str) -> list[str]:
    return [insn.strip() for line in source.strip().splitlines() for insn in line.split(";")]


def _assembled(tmp_path: Path, source: str) -> tuple[bytes, list[int]]:
    """`.text` of an assembled file and where each of its instructions starts, by a label before each."""
    lines = [f".globl i{n}\ni{n}: 0: {insn}" for n, insn in enumerate(_split(source))]
    (tmp_path / "t.s").write_text(".text\n" + "\n".join(lines) + "\n.globl end\nend:\n")
    subprocess.run(["as", "t.s", "-o", "t.o"], cwd=tmp_path, check=True)
    return _text(tmp_path, "t.o"), sorted(int(line.split()[0], 16) for line in subprocess.run(
        ["nm", "t.o"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.splitlines())


def _text(tmp_path: Path, obj: str) -> bytes:
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.text", obj, "text.bin"], cwd=tmp_path, check=True)
    return (tmp_path / "text.bin").read_bytes()


def test_lengths_match_the_assembler(tmp_path):
    code, starts = _assembled(tmp_path, INSTRUCTIONS)
    bounds = instruction_bounds(code)
    assert len(starts) == len(_split(INSTRUCTIONS)) + 1  # and the end
    assert list(bounds.starts) + [len(code)] == starts
    assert list(bounds.ends) == starts[1:]


@pytest.mark.parametrize("flags", [["-O0"], ["-O2", "-fPIC"], ["-O3", "-march=x86-64-v3"],
                                   ["-O3", "-march=x86-64-v4", "-mprefer-vector-width=512"], ["-Os", "-mno-red-zone"]])
def test_lengths_match_capstone_on_compiled_code(tmp_path, flags):
    (tmp_path / "p.c").write_text(PROGRAM)
    subprocess.run(["gcc", *flags, "-c", "p.c", "-o", "p.o"], cwd=tmp_path, check=True)
    code = _text(tmp_path, "p.o")
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    theirs = [(address, address + size) for address, size, _, _ in md.disasm_lite(code, 0)]
    assert theirs[-1][1] == len(code)  # capstone decoded all of it: a fair reference
    bounds = instruction_bounds(code)
    assert list(zip(bounds.starts, bounds.ends)) == theirs
    if "x86-64-v4" in flags:
        assert any("zmm" in ops for *_, ops in md.disasm_lite(code, 0))  # EVEX code was compiled (and decoded)


@pytest.mark.parametrize("code, why", [
    (b"\x06", "push %es: invalid in 64-bit mode"),
    (b"\x0f", "an escape byte and nothing after it"),
    (b"\x48", "a REX prefix at the end"),
    (b"\xe8\x00\x00", "a call cut off"),
    (b"\xc4\xe2", "a VEX prefix cut off"),
    (b"\x8b\x04", "a SIB byte missing"),
    (b"\x66" * 14 + b"\x89\x04\x24", "longer than 15 bytes"),
])
def test_undecodable_bytes_are_one_byte_of_data(code, why):
    assert instruction_length(code, 0) == 1, why
    bounds = instruction_bounds(code)
    assert bounds.ends[0] == 1 and bounds.ends[-1] == len(code), why  # and decoding goes on after it


def test_layout_of_an_instruction():
    insn = decode(b"\x90\xc7\x05\x10\x00\x00\x00\x01\x00\x00\x00", 1)  # movl $1, 0x10(%rip) after a nop
    assert (insn.length, insn.opcode_map, insn.opcode, insn.modrm, insn.immediate_at, insn.relative) == \
        (10, 0, 0xC7, 0x05, 6, False)
    call = decode(b"\xe8\x00\x00\x00\x00", 0)
    assert (call.length, call.immediate_at, call.relative) == (5, 1, True)
    mov = decode(b"\x41\xb8\x07\x00\x00\x00", 0)  # mov $7, %r8d
    assert (mov.rex, mov.opcode, mov.immediate_at, mov.length) == (0x41, 0xB8, 2, 6)
    vex = decode(b"\xc4\xe3\xfd\x00\xca\x4e", 0)  # vpermq $0x4e, %ymm2, %ymm1: map 3, an imm8
    assert (vex.opcode_map, vex.opcode, vex.immediate_at, vex.length) == (3, 0x00, 5, 6)


def test_any_bytes_decode_into_instructions_covering_them():
    """Whatever an object holds (the differ reads untrusted files): no exception, every byte in one instruction
    of 1 to 15 bytes."""
    rng = random.Random(11)
    for _ in range(20000):
        code = rng.randbytes(rng.randint(1, 24))
        bounds = instruction_bounds(code)
        assert bounds.starts[0] == 0 and bounds.ends[-1] == len(code)
        assert list(bounds.starts[1:]) == list(bounds.ends[:-1])
        assert all(1 <= end - start <= 15 for start, end in zip(bounds.starts, bounds.ends))
