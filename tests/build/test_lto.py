"""Link-time optimised builds (issue 13): detected and said in the step log, diffed at the link (the objects hold
compiler IR, the code the program runs only exists after the link; they used to be reported as "no functional
change", exit 3), fixed live; a link we cannot look into is refused with the reason (exit 1), never exit 3."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from buildenv import FIXTURES, REPO, assert_one_line_error, copy_fixture, make
from support import elfcheck

from patch_build.kbuild.lto import lto_flag, object_contents
from patch_build.patchformat.module import read_module

pytestmark = pytest.mark.slow  # LTO builds of whole programs, fixed live: about a minute


def _patch_ctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patch_build.loader", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))


def _prices(prog, until) -> list[tuple[int, int]]:
    """(price, served) lines of ltoprog or cxxlto, read until `until` holds for the last one (at most 15)."""
    lines = []
    while len(lines) < 15 and not (lines and until(*lines[-1])):
        m = re.search(r"price=(\d+)\D+served=(\d+)", prog.stdout.readline())
        lines.append((int(m.group(1)), int(m.group(2))))
    return lines


def _fixed_live(program, module, name, unwind: bool = False) -> None:
    """Run `program` (it prints amount + rate(amount) for amounts 100, 101, ... once a second), apply `module`:
    the rate goes from a tenth to a fifth in the same process, whose count goes on; revert: a tenth again.
    `unwind`: the module's unwind information is registered with the program's unwinder (libgcc_s, C++)."""
    prog = subprocess.Popen([program, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert _prices(prog, lambda p, s: True) == [(110, 1)]  # price(100) = 100 + 100 / 10
        apply = _patch_ctl("apply", "-p", prog.pid, module)
        assert apply.returncode == 0, apply.stderr
        if unwind:
            listed = _patch_ctl("list", "-p", prog.pid)
            assert "unwind information registered at" in listed.stdout, listed.stdout + listed.stderr
        patched = _prices(prog, lambda p, s: p == 100 + s - 1 + (100 + s - 1) // 5)
        assert patched[-1][0] == 100 + patched[-1][1] - 1 + (100 + patched[-1][1] - 1) // 5, patched
        # the same process, its state kept: served goes on counting
        assert [s for _, s in patched] == list(range(2, 2 + len(patched)))
        revert = _patch_ctl("revert", "-p", prog.pid, name)
        assert revert.returncode == 0, revert.stderr
        reverted = _prices(prog, lambda p, s: p == 100 + s - 1 + (100 + s - 1) // 10)
        assert reverted[-1][1] == patched[-1][1] + len(reverted), reverted
        assert prog.poll() is None
    finally:
        prog.kill()
        prog.wait()


@pytest.mark.parametrize("flags, holds", [("-O2 -g -flto", "IR only"),
                                          ("-O2 -g -flto -ffat-lto-objects", "IR and machine code")])
def test_lto_program_fixed_live_through_link_diff(patch_build, tmp_path, flags, holds):
    # ltoprog's fix is in rate() of tax.c, which LTO inlines into price() of main.c: no object holds that
    # code, the link-diff finds price() changed.
    src = copy_fixture("ltoprog", tmp_path)
    make(src, f"CFLAGS={flags}")  # the deployed build: no wrapper, no --emit-relocs
    run = patch_build("-s", src, "-t", "prog", "--build-cmd", f"make CFLAGS='{flags}'", "-o", tmp_path / "out",
                      FIXTURES / "ltoprog-fix.patch")
    assert run.returncode == 0, run.stderr
    assert (f"LTO build: 2 of 2 compiled units use link-time optimisation (-flto); their objects hold {holds}: "
            "diffing the linked programs (link-diff)") in run.stderr
    # main.c's price() is price.lto_priv.N once LTO also sees tax.c's static price(): replaced by that name
    # (serve(), its caller, changes too: LTO's knowledge of price() shaped its code)
    assert re.search(r"function\(s\): prog:price\.lto_priv\.\d[,)]", run.stderr), run.stderr
    report = json.loads((tmp_path / "out" / "ltoprog-fix.report.json").read_text())
    assert report["status"] == "built"
    _fixed_live(src / "prog", tmp_path / "out" / "ltoprog-fix.kpatch", "ltoprog-fix")


def test_cxx_lto_program_fixed_live(patch_build, tmp_path):
    # cxxlto: Pricer::rate() of pricer.cpp, inlined by LTO into serve() of main.cpp (a function of an anonymous
    # namespace: a local symbol, by its mangled name).
    src = copy_fixture("cxxlto", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "out", FIXTURES / "cxxlto-fix.patch")
    assert run.returncode == 0, run.stderr
    assert "LTO build: 2 of 2 compiled units" in run.stderr
    assert "(1 function(s): prog:_ZN12_GLOBAL__N_15serveERK6Priceri)" in run.stderr
    # the link-diff module carries serve()'s unwind information (the linked program's FDE, as an object's)
    module = tmp_path / "out" / "cxxlto-fix.kpatch"
    relocations = subprocess.run(["readelf", "-rW", module], capture_output=True, text=True, check=True).stdout
    assert "'.rela.eh_frame'" in relocations, relocations
    eh_frame = relocations.split("'.rela.eh_frame'", 1)[1].split("\n\n", 1)[0]
    assert "R_X86_64_PC32" in eh_frame and ".text._ZN12_GLOBAL__N_15serveERK6Priceri + 0" in eh_frame, relocations
    _fixed_live(src / "prog", module, "cxxlto-fix", unwind=True)


def _apply_op(op: int, x: int, fixed: bool) -> int:
    """switchlto's apply_op(), before and after switchlto-fix.patch (C's division and remainder: x > 0 here)."""
    return [x + 1, x * 3, x - (9 if fixed else 7), x // 3, x ^ 0x55, x << 2, -x, x % 11, x * x,
            x + (2000 if fixed else 1000), x >> 1, x | 0x100][op]


def _rounds(prog, fixed: bool, count: int) -> list[tuple[int, int, int, bool]]:
    """switchlto's lines, (op, value, served, fixed), read until `count` lines in a row are `fixed` (or not),
    at most 300 (the lines printed while patch-ctl ran come first)."""
    out: list[tuple[int, int, int, bool]] = []
    while len(out) < 300 and not (len(out) >= count and all(r[3] == fixed for r in out[-count:])):
        line = prog.stdout.readline()
        m = re.fullmatch(r"op=(\d+) value=(-?\d+) served=(\d+)( fixed)?\n", line)
        assert m, line
        out.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), bool(m.group(4))))
    return out


def test_jump_table_program_fixed_live(patch_build, tmp_path):
    # switchlto: the fix changes two cases of apply_op(), whose switch is a jump table (PC-relative entries in
    # .rodata, one relocation each with --emit-relocs), and the format string of its caller serve() in
    # main.c. Each table entry must point into the module's own apply_op: read as S + A, entries pointed past
    # it (at serve(), or at padding: redis's "undefined symbol .text").
    src = copy_fixture("switchlto", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "out", FIXTURES / "switchlto-fix.patch")
    assert run.returncode == 0, run.stderr
    assert "(2 function(s): prog:apply_op, prog:serve)" in run.stderr
    module = tmp_path / "out" / "switchlto-fix.kpatch"
    relocations = subprocess.run(["readelf", "-rW", module], capture_output=True, text=True, check=True).stdout
    (table,) = [block for block in relocations.split("\n\n") if "'.rela.rodata." in block and "R_X86_64_PC32" in block]
    entries = [line.split()[-3] for line in table.splitlines() if "R_X86_64_PC32" in line]
    assert entries == [".text.apply_op"] * 12, table

    prog = subprocess.Popen([src / "prog", "3000"], stdout=subprocess.PIPE, text=True)
    try:
        lines = _rounds(prog, False, 12)  # every case through the running code
        apply = _patch_ctl("apply", "-p", prog.pid, module)
        assert apply.returncode == 0, apply.stderr
        lines += _rounds(prog, True, 24)  # every case, twice, through the module's
        revert = _patch_ctl("revert", "-p", prog.pid, "switchlto-fix")
        assert revert.returncode == 0, revert.stderr
        lines += _rounds(prog, False, 12)
        assert prog.poll() is None
    finally:
        prog.kill()
        prog.wait()
    assert [served for _, _, served, _ in lines] == list(range(1, len(lines) + 1))  # one process, its count kept
    assert all(value == _apply_op(op, 100 + served - 1, fixed) for op, value, served, fixed in lines), lines
    switches = [i for i in range(1, len(lines)) if lines[i][3] != lines[i - 1][3]]
    assert len(switches) == 2, lines  # fixed once, reverted once


def test_link_without_relocations_is_refused(patch_build, tmp_path):
    # The build links by an absolute compiler path, past the wrapper: the link keeps no relocations, and a
    # link-diff cannot look into it. Refused with the reason (exit 1), not "no functional change".
    src = copy_fixture("ltoprog", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "prog", "--build-cmd", "make LINK_CC=/usr/bin/gcc", "-o", tmp_path / "out",
                      FIXTURES / "ltoprog-fix.patch")
    assert_one_line_error(run, 1, "cannot diff prog at the link", "--emit-relocs")
    assert "LTO build: 2 of 2" in run.stderr
    assert json.loads((tmp_path / "out" / "ltoprog-fix.report.json").read_text())["status"] == "refused"
    assert not (tmp_path / "out" / "ltoprog-fix.kpatch").exists()
    assert run.scratch_trees() == []


def test_same_program_without_lto_diffs_per_object(patch_build, tmp_path):
    src = copy_fixture("ltoprog", tmp_path)
    make(src, "CFLAGS=-O2 -g")
    run = patch_build("-s", src, "-t", "prog", "--build-cmd", "make CFLAGS='-O2 -g'", "-o", tmp_path / "out",
                      FIXTURES / "ltoprog-fix.patch")
    assert run.returncode == 0, run.stderr
    assert "LTO" not in run.stderr and "diffing 1 object" in run.stderr
    assert "prog:rate" in run.stderr  # per object: rate() is its own function without LTO


@pytest.mark.parametrize("args, flag", [
    (["-O2", "-flto", "-c"], "-flto"),
    (["-flto=auto", "-c"], "-flto=auto"),
    (["-flto", "-fno-lto"], None),  # gcc: the last one wins
    (["-fno-lto", "-flto=4"], "-flto=4"),
    (["-O2", "-fltofoo"], None),
])
def test_lto_flag_in_effect(args, flag):
    assert lto_flag(args) == flag


@pytest.mark.parametrize("flags, holds", [(["-flto"], "IR only"), (["-flto", "-ffat-lto-objects"],
                                                                   "IR and machine code"), ([], "machine code")])
def test_object_contents_of_real_gcc_objects(tmp_path, flags, holds):
    source = tmp_path / "f.c"
    source.write_text("int f(int x) { return x + 1; }\n")
    obj = tmp_path / "f.o"
    subprocess.run(["gcc", "-O2", *flags, "-c", "-o", obj, source], check=True)
    assert object_contents(obj) == holds


def test_cxx_program_built_with_lto(patch_build, tmp_path):
    # cxxapp (CMake, C++) with -flto: its fix changes a method, a template in a header and a string; LTO inlines
    # geo::describe into main, so the link-diff replaces main too (a running cxxapp never leaves main, so
    # patch-ctl could not apply this one live: ltoprog is the live test).
    build = "cmake -S . -B build -DCMAKE_CXX_FLAGS='-O2 -g -flto' >/dev/null && cmake --build build"
    src = copy_fixture("cxxapp", tmp_path)
    subprocess.run(["sh", "-c", build], cwd=src, check=True, capture_output=True)
    run = patch_build("-s", src, "-t", "build/cxxapp", "--build-cmd", build, "-o", tmp_path / "out",
                      FIXTURES / "cxxapp-fix.patch")
    assert run.returncode == 0, run.stderr
    assert "LTO build: 3 of 3 compiled units" in run.stderr
    info = read_module(tmp_path / "out" / "cxxapp-fix.kpatch")
    assert info.valid, info.problems
    assert sorted(f.name for f in info.funcs) == ["_ZN3geo7roundedIdEET_S1_", "_ZNK3geo6Circle4areaEv", "main"]


def test_link_diff_forced_on_a_plain_build(patch_build, tmp_path):
    # --link-diff on cprog (no LTO): the same functions and sympos as the per-object mode finds for
    # cprog-fix.patch (test_cprog), and cprog-cross-unit.patch (a new function of msg.c that calc.c's compute
    # calls) fixes the running program.
    src = copy_fixture("cprog", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "prog", "--link-diff", "-o", tmp_path / "fix", FIXTURES / "cprog-fix.patch")
    assert run.returncode == 0, run.stderr
    assert "diffing 1 linked program" in run.stderr and "LTO" not in run.stderr
    info = read_module(tmp_path / "fix" / "cprog-fix.kpatch")
    assert sorted((f.name, f.sympos) for f in info.funcs) == [
        ("bump", 2), ("compute", 0), ("count_calls", 0), ("greeting", 0), ("scaled", 0)]
    assert "_IO_stdin_used" not in elfcheck.defined_names(tmp_path / "fix" / "cprog-fix.kpatch")

    run = patch_build("-s", src, "-t", "prog", "--link-diff", "-o", tmp_path / "out",
                      FIXTURES / "cprog-cross-unit.patch")
    assert run.returncode == 0, run.stderr
    prog = subprocess.Popen([src / "prog", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert "compute=1 " in prog.stdout.readline()
        apply = _patch_ctl("apply", "-p", prog.pid, tmp_path / "out" / "cprog-cross-unit.kpatch")
        assert apply.returncode == 0, apply.stderr
        computed = []
        while len(computed) < 15 and (not computed or computed[-1] < 1000):
            computed.append(int(re.search(r"compute=(\d+)", prog.stdout.readline()).group(1)))
        assert computed[-1] == 2 * len(computed) + 1 + 1000, computed
    finally:
        prog.kill()
        prog.wait()
