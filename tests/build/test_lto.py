"""Link-time optimised builds (issue 13): detected, said in the step log, refused with the reason (exit 1), never
reported as "no functional change" (they used to be: exit 3, "the changed objects are not linked into prog")."""
from __future__ import annotations

import json
import subprocess

import pytest
from buildenv import FIXTURES, assert_one_line_error, copy_fixture, make

from kbuild.lto import lto_flag, object_contents


@pytest.mark.parametrize("flags, holds", [("-O2 -g -flto", "IR only"),
                                          ("-O2 -g -flto -ffat-lto-objects", "IR and machine code")])
def test_lto_build_is_refused_with_the_reason(patch_build, tmp_path, flags, holds):
    # ltoprog's fix is in rate() of tax.c, which LTO inlines into price() of main.c: no object holds that code.
    src = copy_fixture("ltoprog", tmp_path)
    make(src, f"CFLAGS={flags}")
    run = patch_build("-s", src, "-t", "prog", "--build-cmd", f"make CFLAGS='{flags}'", "-o", tmp_path / "out",
                      FIXTURES / "ltoprog-fix.patch")
    assert_one_line_error(run, 1, "LTO build", "tax.c", "link-time optimisation")
    assert "no functional change" not in run.stderr
    assert f"LTO build: 2 of 2 compiled units use link-time optimisation (-flto); their objects hold {holds}" \
        in run.stderr  # the step log says so as soon as the original build is done
    assert run.stderr.index("LTO build: 2 of 2") < run.stderr.index("building patched")
    report = json.loads((tmp_path / "out" / "ltoprog-fix.report.json").read_text())
    assert report["status"] == "refused"
    assert "tax.c" in report["message"]
    assert not (tmp_path / "out" / "ltoprog-fix.kpatch").exists()
    assert run.scratch_trees() == []


def test_same_program_without_lto_still_builds(patch_build, tmp_path):
    # The detection is by flags and objects, not by program: the fixture built without -flto diffs per object.
    src = copy_fixture("ltoprog", tmp_path)
    make(src, "CFLAGS=-O2 -g")
    run = patch_build("-s", src, "-t", "prog", "--build-cmd", "make CFLAGS='-O2 -g'", "-o", tmp_path / "out",
                      FIXTURES / "ltoprog-fix.patch")
    assert run.returncode == 0, run.stderr
    assert "LTO" not in run.stderr
    assert (tmp_path / "out" / "ltoprog-fix.kpatch").is_file()


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
