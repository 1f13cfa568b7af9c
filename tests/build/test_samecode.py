"""Comparing an object's functions with a deployed binary built without -ffunction-sections, where the assembler
shortened branches and the linker relaxed GOT accesses: same code, other bytes."""
from __future__ import annotations

import subprocess

from patch_build.diffobj.read import read_object
from patch_build.kbuild.deployed import UnitSymbols, load_binary, mismatches

SOURCE = """
int counter;
static __attribute__((noipa)) int step(int *c, int by) { *c += by; return *c; }
int tick(void) { return step(&counter, 1); }            /* tail call: `jmp step`, 2 bytes when resolved */
int *where(void) { return &counter; }                   /* -fPIC: GOT load, relaxed to lea by the linker */
int main(void) { return tick() + *where(); }
"""


def build(tmp_path, flags: list[str], name: str):
    src = tmp_path / "unit.c"
    src.write_text(SOURCE)
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-O2", "-fPIC", *flags, "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(["gcc", "-pie", str(obj), "-o", str(tmp_path / name)], check=True)
    return obj


def test_relaxed_and_shortened_code_is_the_same(tmp_path):
    ours = read_object(str(build(tmp_path, ["-ffunction-sections", "-fdata-sections"], "ours")))
    build(tmp_path, [], "deployed")
    deployed = load_binary(tmp_path / "deployed")
    relocs = {r.type for s in ours.sections for r in s.relocations}
    assert 42 in relocs  # R_X86_64_REX_GOTPCRELX: the GOT load the linker relaxes
    unit = UnitSymbols(deployed, ours)
    assert unit.find(next(s for s in ours.symbols if s.name == "tick")).size < \
        next(s for s in ours.symbols if s.name == "tick").size  # the deployed `jmp step` is the short form
    assert mismatches(ours, ["tick", "where", "step", "main"], unit) == []


def test_other_code_is_reported(tmp_path):
    ours = read_object(str(build(tmp_path, ["-ffunction-sections", "-fdata-sections"], "ours")))
    (tmp_path / "unit.c").write_text(SOURCE.replace("step(&counter, 1)", "step(&counter, 2)"))
    subprocess.run(["gcc", "-O2", "-fPIC", "-c", str(tmp_path / "unit.c"), "-o", str(tmp_path / "other.o")],
                   check=True)
    subprocess.run(["gcc", "-pie", str(tmp_path / "other.o"), "-o", str(tmp_path / "other")], check=True)
    problems = mismatches(ours, ["tick", "where"], UnitSymbols(load_binary(tmp_path / "other"), ours))
    [problem] = problems  # `where` is the same; tick passes 2, not 1
    assert problem.startswith("tick (+0x") and problem.endswith(": mov differs)")


TABLE = """
static const int table[4] = {1, 2, 3, LAST};
int lookup(int i) { return table[i & 3]; }
int main(int argc, char **argv) { (void)argv; return lookup(argc); }
"""


def _table_build(tmp_path, name: str, last: int, flags: list[str]):
    src = tmp_path / f"{name}.c"
    src.write_text(TABLE)
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-O2", "-fno-pie", f"-DLAST={last}", *flags, "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(["gcc", "-no-pie", str(obj), "-o", str(tmp_path / name)], check=True)
    return obj


def test_referenced_read_only_data_is_compared(tmp_path):
    # -fno-pie: the table is reached by an absolute address (R_X86_64_32S), the instructions are the same.
    ours = read_object(str(_table_build(tmp_path, "ours", 4, ["-ffunction-sections", "-fdata-sections"])))
    assert 11 in {r.type for s in ours.sections for r in s.relocations}
    _table_build(tmp_path, "same", 4, [])
    _table_build(tmp_path, "other", 5, [])
    assert mismatches(ours, ["lookup"], UnitSymbols(load_binary(tmp_path / "same"), ours)) == []
    [problem] = mismatches(ours, ["lookup"], UnitSymbols(load_binary(tmp_path / "other"), ours))
    assert problem.startswith("lookup (+0x") and problem.endswith("uses table (16 bytes), other contents deployed)")


POINTER = """
__attribute__((noipa)) int first(int x) { return x + 1; }
__attribute__((noipa)) int second(int x) { return x + 2; }
int (*pick(void))(int) { return CHOSEN; }
int main(void) { return pick()(first(1) + second(2)); }
"""


def test_referenced_function_address_is_compared(tmp_path):
    # -fPIE: `lea first(%rip)` and `lea second(%rip)` are the same bytes once the displacement is masked.
    def build_pointer(name: str, chosen: str, flags: list[str]):
        src = tmp_path / f"{name}.c"
        src.write_text(POINTER)
        obj = tmp_path / f"{name}.o"
        subprocess.run(["gcc", "-O2", "-fPIE", f"-DCHOSEN={chosen}", *flags, "-c", str(src), "-o", str(obj)],
                       check=True)
        subprocess.run(["gcc", "-pie", str(obj), "-o", str(tmp_path / name)], check=True)
        return read_object(str(obj))

    ours = build_pointer("ours", "first", ["-ffunction-sections", "-fdata-sections"])
    build_pointer("same", "first", [])
    build_pointer("other", "second", [])
    assert mismatches(ours, ["pick"], UnitSymbols(load_binary(tmp_path / "same"), ours)) == []
    [problem] = mismatches(ours, ["pick"], UnitSymbols(load_binary(tmp_path / "other"), ours))
    assert problem.startswith("pick (+0x") and problem.endswith(
        "lea the address of first+0x0 built, of second+0x0 deployed)")


def test_calls_resolved_inside_one_section(tmp_path):
    # Code built without -ffunction-sections (a library a link-diff reads, such as redis's lua): tick's tail call
    # to the static step() has no relocation; the same distance deployed is the same code (it was reported as
    # "jmp to ('insn', None) built, to ('step', 0) deployed"), another distance is not.
    ours = read_object(str(build(tmp_path, [], "ours")))
    tick = next(s for s in ours.symbols if s.name == "tick")
    assert not [r for r in tick.section.relocations if tick.value <= r.offset < tick.value + tick.size
                and r.symbol.name == "step"]
    assert mismatches(ours, ["tick", "step"], UnitSymbols(load_binary(tmp_path / "ours"), ours)) == []
    (tmp_path / "unit.c").write_text("static int pad(int x) { return x * 7 + 1; }\n"
                                     "int use_pad(int x) { return pad(x); }\n" + SOURCE)
    subprocess.run(["gcc", "-O2", "-fPIC", "-c", str(tmp_path / "unit.c"), "-o", str(tmp_path / "other.o")], check=True)
    subprocess.run(["gcc", "-pie", str(tmp_path / "other.o"), "-o", str(tmp_path / "other")], check=True)
    problems = mismatches(ours, ["tick"], UnitSymbols(load_binary(tmp_path / "other"), ours))
    assert problems and "tick (" in problems[0] and " built, to -0x" in problems[0], problems


LINKED = r"""#include <stdio.h>
#include <string.h>
static __attribute__((noipa)) int named(const char *s) { return strcmp(s, "listpack.c") == 0; }
int main(int argc, char **argv)
{
	printf("%d %s\n", named(argv[0]), argc > 1 ? "three blind mice went up the hill" : "one");
	return 0;
}
"""


def test_anonymous_data_in_another_layout_is_the_same(tmp_path):
    # A link-diff reads the scratch link (-fdata-sections): an anonymous item there runs up to the next address
    # code references, across alignment padding after a string. The deployed link (redis built without the
    # flags) may put another item right after the string: the string is the same, what follows is not.
    from patch_build.diffobj.correlate import link_children
    from patch_build.diffobj.linked import read_linked
    from patch_build.kbuild.lto import LinkedSymbols

    (tmp_path / "m.c").write_text(LINKED)
    scratch = tmp_path / "scratch"
    subprocess.run(["gcc", "-O2", "-flto", "-ffunction-sections", "-fdata-sections", "-Wl,--emit-relocs",
                    "-o", scratch, tmp_path / "m.c"], check=True)
    blob = bytearray(scratch.read_bytes())
    string = b"listpack.c\0"
    at = blob.index(string) + len(string)
    padding = len(blob[at:at + 8]) - len(blob[at:at + 8].lstrip(b"\0"))
    assert padding > 0  # the scratch link pads the string (the next one is aligned)
    blob[at:at + padding] = b"\xa5" * padding  # the deployed link: other bytes there
    (tmp_path / "deployed").write_bytes(blob)
    ours = read_linked(str(scratch))
    link_children(ours)
    where = LinkedSymbols(load_binary(tmp_path / "deployed"), ours)
    assert mismatches(ours, ["main", "named"], where) == []

    blob[at - 2] = ord("h")  # the string itself differs: "listpack.h"
    (tmp_path / "deployed").write_bytes(blob)
    where = LinkedSymbols(load_binary(tmp_path / "deployed"), ours)
    (problem,) = mismatches(ours, ["main", "named"], where)
    assert problem.startswith("named (+0x") and "(11 bytes), other contents deployed" in problem, problem


CROSS_TABLE = r"""#include <stdio.h>
#include <stdlib.h>
int dispatch(int i);
/* dispatch's jump table points into answer, another function: hand-written, as gcc keeps a function's tables to
   its own code. */
__asm__(".text\n.globl answer\n.type answer,@function\nanswer:\n"
	".Lone:\n\tmovl $1, %eax\n\tret\n" PADDING ".Ltwo:\n\tmovl $2, %eax\n\tret\n.size answer, .-answer\n"
	".globl dispatch\n.type dispatch,@function\ndispatch:\n\tmovslq %edi, %rdi\n\tleaq .Ltable(%rip), %rdx\n"
	"\tmovslq (%rdx,%rdi,4), %rax\n\taddq %rdx, %rax\n" FIX "\tjmp *%rax\n.size dispatch, .-dispatch\n"
	".section .rodata\n\t.p2align 2\n.Ltable:\n\t.long .Lone - .Ltable\n\t.long .Ltwo - .Ltable\n.text\n");
int main(int argc, char **argv) { printf("%d\n", dispatch(argc > 1 ? atoi(argv[1]) : 0)); return 0; }
"""


def test_jump_table_into_a_function_not_replaced(tmp_path):
    # A link-diff module reaches a function it does not replace through the jump table of one it does: the entry
    # becomes a reference to the running function + the case's offset, which the deployed check verifies.
    from patch_build.kbuild.lto import diff_linked

    (tmp_path / "x.c").write_text(CROSS_TABLE)

    def link(name: str, padding: str = "", fix: str = "", flags: tuple[str, ...] = ("-Wl,--emit-relocs",)):
        subprocess.run(["gcc", "-O2", f"-DPADDING=\"{padding}\"", f"-DFIX=\"{fix}\"", *flags, "-o",
                        tmp_path / name, tmp_path / "x.c"], check=True)
        return tmp_path / name

    orig, patched = link("orig"), link("patched", fix=r"\txorl %ecx, %ecx\n")
    deployed = link("deployed", flags=())
    unit = diff_linked("prog", orig, patched, load_binary(deployed), tmp_path / "out.o")
    assert unit.changed == ["dispatch"] and unit.mismatched == [] and unit.output is not None
    relocations = subprocess.run(["readelf", "-rW", tmp_path / "out.o"], capture_output=True, text=True,
                                 check=True).stdout
    (table,) = [b for b in relocations.split("\n\n") if "'.rela.rodata." in b]
    assert [line.split()[-3:] for line in table.splitlines() if "R_X86_64_PC32" in line] == [
        ["answer", "+", "0"], ["answer", "+", "a"]]  # .Ltwo at +6, the second entry 4 bytes into the table

    # deployed with a nop before .Ltwo: the same code for the instruction compare, but the case is at +7 there
    shifted = link("shifted", padding=r"\tnop\n", flags=())
    unit = diff_linked("prog", orig, patched, load_binary(shifted), tmp_path / "out2.o")
    assert unit.mismatched == ["answer (a jump table of dispatch points at +0x6, which is +0x7 in shifted)"]
    assert unit.output is None
