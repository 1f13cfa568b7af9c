"""diffobj.linked: a linked program (with -Wl,--emit-relocs) read as an object-shaped model for link-diff; what it
cannot read is one InputError naming the file, never a traceback."""
from __future__ import annotations

import random
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from patch_build.common.errors import InputError
from patch_build.diffobj.linked import read_linked
from patch_build.elfcore import ehframe

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
