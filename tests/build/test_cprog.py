"""A multi-file C program built by its Makefile: the module's functions, target identity and ELF validity."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from buildenv import FIXTURES, REPO, assert_one_line_error, build_id, copy_fixture, make, tree_digest
from support import elfcheck

from patch_build.patchformat.module import read_module


def test_module_of_c_program(patch_build, tmp_path):
    # SRCDIR holds the deployed build (plain make: no -ffunction-sections), the default --target-binary.
    src = copy_fixture("cprog", tmp_path)
    make(src)
    before = tree_digest(src)
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "out", FIXTURES / "cprog-fix.patch")
    assert run.returncode == 0, run.stderr
    assert tree_digest(src) == before, "SRCDIR was modified"
    assert run.scratch_trees() == []

    module = tmp_path / "out" / "cprog-fix.kpatch"
    info = read_module(module)
    assert info.valid, info.problems
    assert info.name == "cprog-fix"
    assert [(t.name, t.build_id) for t in info.targets] == [("prog", build_id(src / "prog"))]
    # changed function, changed string, header change (SCALE rebuilds calc.c), changed function using a static
    # local, changed static function whose name main.c also has (main.o links first: sympos 2).
    assert sorted((f.name, f.objname, f.sympos) for f in info.funcs) == [
        ("bump", "prog", 2), ("compute", "prog", 0), ("count_calls", "prog", 0),
        ("greeting", "prog", 0), ("scaled", "prog", 0)]
    assert elfcheck.readelf_problems(module) == []
    assert "clamp" in elfcheck.defined_functions(module)  # the new static helper travels with the patch
    assert any(n.startswith(".kpatch.sym.prog.calls") for n in elfcheck.undefined_names(module))

    report = json.loads((tmp_path / "out" / "cprog-fix.report.json").read_text())
    assert report["status"] == "built"
    assert report["targets"] == [{"name": "prog", "build_id": build_id(src / "prog"), "kernel_release": None}]
    assert {o["source"] for o in report["objects"]} == {"calc.c", "msg.c"}
    calc = next(o for o in report["objects"] if o["source"] == "calc.c")
    assert {(f["name"], f["status"]) for f in calc["functions"]} >= {("compute", "changed"), ("clamp", "new")}
    assert report["compilers"] and "GCC" in report["compilers"][0]["version"]
    assert report["module"]["path"] == "cprog-fix.kpatch"
    assert (tmp_path / "out" / "cprog-fix.report.html").is_file()


def test_deployed_binary_from_other_flags_is_refused(patch_build, tmp_path):
    deployed = copy_fixture("cprog", tmp_path)
    make(deployed, "CFLAGS=-O0 -g")
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "--target-binary", deployed / "prog",
                      "-o", tmp_path / "out", FIXTURES / "cprog-fix.patch")
    assert_one_line_error(run, 1, "deployed binary", "compute", "greeting")
    assert not (tmp_path / "out" / "cprog-fix.kpatch").exists()
    assert run.scratch_trees() == []


def test_comment_only_patch_is_no_change(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path, FIXTURES / "cprog-comment.patch")
    assert_one_line_error(run, 3, "no functional change")
    assert not (tmp_path / "cprog-comment.kpatch").exists()


def test_scratch_kept_with_debug(patch_build, tmp_path):
    run = patch_build("-d", "-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path, FIXTURES / "cprog-broken.patch")
    assert_one_line_error(run, 2, "patched build failed")
    [scratch] = run.scratch_trees()
    assert f"scratch tree kept: {scratch}" in run.stderr
    assert (scratch / "src" / "prog").is_file()  # the original build is there to inspect
    assert "undeclared_offset" in (scratch / "build-patched.log").read_text()


def test_new_function_called_from_another_unit(patch_build, tmp_path):
    # msg.c gains offset_of_the_day(), calc.c's compute() calls it: the module carries it (it used to leave it
    # undefined, a symbol the running program lacks), and the running program computes with it once patched.
    src = copy_fixture("cprog", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "out", FIXTURES / "cprog-cross-unit.patch")
    assert run.returncode == 0, run.stderr
    module = tmp_path / "out" / "cprog-cross-unit.kpatch"
    assert "offset_of_the_day" in elfcheck.defined_functions(module)
    assert elfcheck.undefined_names(module).isdisjoint({"offset_of_the_day"})

    prog = subprocess.Popen([src / "prog", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert "compute=1 " in prog.stdout.readline()  # compute(0) = 0 * 2 + 1
        apply = subprocess.run([sys.executable, "-m", "patch_build.loader", "apply", "-p", str(prog.pid), module],
                               capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert apply.returncode == 0, apply.stderr
        computed = []  # the lines printed while patch-ctl ran come first: read on until a patched one
        while len(computed) < 15 and (not computed or computed[-1] < 1000):
            computed.append(int(re.search(r"compute=(\d+)", prog.stdout.readline()).group(1)))
        assert computed[-1] == 2 * len(computed) + 1 + 1000, computed  # compute(i) = i * 2 + 1 + 1000
    finally:
        prog.kill()
        prog.wait()


def test_fix_applies_live_to_a_build_without_function_sections(patch_build, tmp_path):
    # The deployed prog is a plain `make` (no -ffunction-sections): there count_calls() ends in a 2-byte jump to
    # bump(), in the scratch build in a 5-byte one. The module records the running function's size (it recorded
    # the scratch build's, and patch-ctl refused: "count_calls: is 14 bytes in the process, 17 in the module's").
    src = copy_fixture("cprog", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "prog", "-o", tmp_path / "out", FIXTURES / "cprog-fix.patch")
    assert run.returncode == 0, run.stderr
    prog = subprocess.Popen([src / "prog", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert "hello, world " in prog.stdout.readline()
        apply = subprocess.run([sys.executable, "-m", "patch_build.loader", "apply", "-p", str(prog.pid),
                                tmp_path / "out" / "cprog-fix.kpatch"],
                               capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert apply.returncode == 0, apply.stderr
        lines = [prog.stdout.readline()]  # the lines printed while patch-ctl ran come first: read on
        while len(lines) < 100 and "hello, patched world" not in lines[-1]:
            lines.append(prog.stdout.readline())
        assert "hello, patched world" in lines[-1], lines
    finally:
        prog.kill()
        prog.wait()
