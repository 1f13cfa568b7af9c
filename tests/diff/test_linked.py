"""diffobj.linked: a linked program (with -Wl,--emit-relocs) read as an object-shaped model for link-diff; what it
cannot read is one InputError naming the file, never a traceback."""
from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from patch_build.common.errors import InputError
from patch_build.diffobj.linked import read_linked
from patch_build.diffobj.targets import TargetResolver
from patch_build.elfcore import ehframe

SWITCHLTO = Path(__file__).resolve().parents[2] / "fixtures" / "build" / "switchlto"

SOURCE = """#include <stdio.h>
static int hits;
static __attribute__((noinline)) int twice(int x) { return 2 * x; }
int main(int argc, char **argv) { hits++; printf("%d %d\\n", twice(argc), hits); return 0; }
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    d = tmp_path_factory.mktemp("linked")
    (d / "m.c").write_text(SOURCE)
    for name, flags in (("relocs", ["-Wl,--emit-relocs"]), ("plain", [])):
        subprocess.run(["gcc", "-O2", "-ffunction-sections", "-o", d / name, d / "m.c", *flags], check=True)
    subprocess.run(["gcc", "-O2", "-c", "-o", d / "m.o", d / "m.c"], check=True)
    subprocess.run(["strip", "-o", d / "stripped", d / "relocs"], check=True)
    return d


def test_model_of_a_linked_program(programs):
    model = read_linked(str(programs / "relocs"))
    by_name = {s.name: s for s in model.symbols if s.name}
    twice, main, hits = by_name["twice"], by_name["main"], by_name["hits"]
    assert twice.section.name == ".text.twice" and twice.value == 0
    assert hits.section.name == ".bss.hits"
    # main's references: to twice through its piece's section symbol (as an object's call to a static
    # function), to hits likewise, to printf by name; every relocation site is zeroed
    targets = {(r.symbol.section.name if r.symbol.is_section else r.symbol.name) for r in main.section.relocations}
    assert {".text.twice", ".bss.hits", "printf"} <= targets
    assert all(main.section.data[r.offset:r.offset + 4] == bytes(4) for r in main.section.relocations)


@pytest.mark.parametrize("name, message", [
    ("plain", "plain: has no relocations for its code (link it with -Wl,--emit-relocs)"),
    ("stripped", "stripped: is stripped (no .symtab)"),
    ("m.o", "m.o: not an x86-64 executable or shared library"),
    ("m.c", "m.c: not an ELF file"),
])
def test_unreadable_programs(programs, name, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_linked(str(programs / name))


def test_corrupt_programs_are_input_errors(programs, tmp_path):
    # Mutations of the section headers, symbol and string tables at the end of the file (and truncations):
    # each one an InputError or a model, never another exception (these once were OverflowError, IndexError,
    # AttributeError and MemoryError from the ELF reader).
    blob = (programs / "relocs").read_bytes()
    rnd = random.Random(13)
    bad = tmp_path / "bad"
    for k in range(300):
        data = bytearray(blob)
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(len(data) - 5000, len(data))] = rnd.randrange(256)
        if k % 5 == 0:
            data = data[:rnd.randrange(len(data) - 5000, len(data))]
        bad.write_bytes(data)
        try:
            read_linked(str(bad))
        except InputError as e:
            assert str(e).startswith("bad: ")


def test_unwind_information_of_a_linked_program(programs):
    # The executable's .eh_frame as an object's: each function's FDE with its CIE, pc_begin a relocation to the
    # function's piece (zeroed), so that diffobj.ehframe keeps the records of included code (issue 13: link-diff
    # modules had none, and the loader registered nothing for their code).
    model = read_linked(str(programs / "relocs"))
    (eh_frame,) = [s for s in model.sections if s.name == ".eh_frame"]
    described = {r.symbol.section.name for r in eh_frame.relocations}
    assert {".text.twice", ".text.main"} <= described
    assert all(r.addend == 0 and eh_frame.data[r.offset:r.offset + 4] == bytes(4) for r in eh_frame.relocations)
    found = ehframe.records(eh_frame.data)  # every FDE points back at a CIE copied before it (else Malformed)
    assert sum(not r.is_cie for r in found) == len(eh_frame.relocations)
    assert eh_frame.data.endswith(bytes(4))  # the terminator


def test_corrupt_unwind_information(programs, tmp_path):
    """Mutations of the executable's .eh_frame: a model (perhaps without unwind information) or an InputError,
    never another exception (pyelftools' CFI reader asserts, or recurses without end, on some)."""
    blob = (programs / "relocs").read_bytes()
    with open(programs / "relocs", "rb") as f:
        sec = ELFFile(f).get_section_by_name(".eh_frame")
        lo, hi = sec["sh_offset"], sec["sh_offset"] + sec["sh_size"]
    rnd = random.Random(7)
    bad = tmp_path / "bad"
    for _ in range(200):
        data = bytearray(blob)
        for _ in range(rnd.randint(1, 6)):
            data[rnd.randrange(lo, hi)] = rnd.randrange(256)
        bad.write_bytes(data)
        try:
            read_linked(str(bad))
        except InputError as e:
            assert str(e).startswith("bad: ")


def test_jump_table_entries_point_at_their_case_labels(tmp_path):
    # switchlto's apply_op() holds a switch gcc compiles to a PIC jump table in .rodata: `.long .Lcase - .Ltable`,
    # kept by --emit-relocs as PC32 `.text + (case label + the entry's distance from the table start)`. Taken
    # as S + A, the later entries pointed past apply_op (at serve(), or at padding no piece covers: redis's
    # "undefined symbol .text"). The table is a piece of its own, and each entry is apply_op + its case label,
    # as the executable's table says.
    for name in ("main.c", "ops.c", "ops.h"):
        shutil.copy(SWITCHLTO / name, tmp_path)
    prog = tmp_path / "prog"
    subprocess.run(["gcc", "-O2", "-flto", "-ffunction-sections", "-Wl,--emit-relocs", "-o", prog,
                    tmp_path / "main.c", tmp_path / "ops.c"], check=True)
    with open(prog, "rb") as f:
        elf = ELFFile(f)
        (apply_op,) = [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == "apply_op"]
        rodata = elf.get_section_by_name(".rodata")
        entries = sorted(r["r_offset"] for r in elf.get_section_by_name(".rela.rodata").iter_relocations())
        table, data = entries[0], rodata.data()
        labels = [table + struct.unpack_from("<i", data, at - rodata["sh_addr"])[0] - apply_op["st_value"]
                  for at in entries]
    assert len(labels) == 12 and all(0 <= label < apply_op["st_size"] for label in labels)

    model = read_linked(str(prog))
    (piece,) = [s for s in model.sections if s.name.startswith(".rodata.") and s.relocations]
    assert piece.size == 48  # the table alone
    resolver = TargetResolver(model)
    code = next(s for s in model.symbols if s.name == "apply_op")
    assert [resolver.resolve(piece, r).symbol for r in piece.relocations] == [code] * 12
    assert [r.symbol for r in piece.relocations] == [code.section.section_symbol] * 12
    assert [resolver.resolve(piece, r).offset for r in piece.relocations] == labels


STRAY = r"""#include <stdio.h>
#include <stdlib.h>
int dispatch(int i);
/* The second case of dispatch's table lies in code no symbol covers (hand-written, after answer's .size). */
__asm__(".text\n.globl answer\n.type answer,@function\nanswer:\n.Lone:\n\tmovl $1, %eax\n\tret\n"
	".size answer, .-answer\n.Ltwo:\n\tmovl $2, %eax\n\tret\n"
	".globl dispatch\n.type dispatch,@function\ndispatch:\n\tmovslq %edi, %rdi\n\tleaq .Ltable(%rip), %rdx\n"
	"\tmovslq (%rdx,%rdi,4), %rax\n\taddq %rdx, %rax\n" FIX "\tjmp *%rax\n.size dispatch, .-dispatch\n"
	".section .rodata\n\t.p2align 2\n.Ltable:\n\t.long .Lone - .Ltable\n\t.long .Ltwo - .Ltable\n.text\n");
int main(int argc, char **argv) { printf("%d\n", dispatch(argc > 1 ? atoi(argv[1]) : 0)); return 0; }
"""


def test_jump_table_into_code_of_no_function_is_refused(tmp_path):
    # Such a case once became a reference to the undefined symbol `.text`, which patch-ctl refused at load time.
    from patch_build.diffobj.diff import DiffOptions, diff_models

    (tmp_path / "x.c").write_text(STRAY)
    for name, fix in (("orig", ""), ("patched", r"\txorl %ecx, %ecx\n")):
        subprocess.run(["gcc", "-O2", f"-DFIX=\"{fix}\"", "-Wl,--emit-relocs", "-o", tmp_path / name,
                        tmp_path / "x.c"], check=True)
    result = diff_models(read_linked(str(tmp_path / "orig")), read_linked(str(tmp_path / "patched")),
                         DiffOptions(objname="x"))
    (error,) = result.errors
    assert error.symbol == "dispatch"  # through its jump table
    assert re.fullmatch(r"references \.text\+0x[0-9a-f]+, which lies in no function or object of the program: "
                        r"the running program has no name for it", error.reason), error.reason
    assert result.output is None
