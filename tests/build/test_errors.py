"""Bad inputs: each a one-line error with the design's exit code, and no scratch tree left behind."""
from __future__ import annotations

import subprocess

from buildenv import FIXTURES, assert_one_line_error, copy_fixture, make

FIX = FIXTURES / "cprog-fix.patch"


def test_srcdir_missing(patch_build, tmp_path):
    run = patch_build("-s", tmp_path / "nowhere", "-t", "prog", FIX)
    assert_one_line_error(run, 2, "nowhere", "no such directory")
    assert run.scratch_trees() == []


def test_patch_does_not_apply(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path, FIXTURES / "cprog-stale.patch")
    assert_one_line_error(run, 2, "cprog-stale.patch does not apply", "hunk #1 of calc.c")
    assert run.scratch_trees() == []


def test_build_failure_shows_compiler_error(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path, FIXTURES / "cprog-broken.patch")
    assert_one_line_error(run, 2, "patched build failed", "calc.c:5", "undeclared_offset")
    assert "  | make: *** [Makefile" in run.stderr  # the tail of the build log, before the error line
    assert run.scratch_trees() == []


def test_target_not_produced(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "server", "-o", tmp_path, FIX)
    assert_one_line_error(run, 2, "TARGET server was not produced")
    assert run.scratch_trees() == []


def test_unsupported_change_surfaces_differ_reason(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path, FIXTURES / "cprog-limit.patch")
    assert_one_line_error(run, 1, "main.c: limit", "initial value")
    assert not (tmp_path / "cprog-limit.kpatch").exists()
    assert run.scratch_trees() == []


def test_stripped_deployed_binary(patch_build, tmp_path):
    deployed = tmp_path / "prog"
    src = copy_fixture("cprog", tmp_path / "src")
    make(src)
    subprocess.run(["strip", "-o", str(deployed), str(src / "prog")], check=True)
    run = patch_build("-s", src, "-t", "prog", "--target-binary", deployed, "-o", tmp_path, FIX)
    assert_one_line_error(run, 2, "prog: is stripped")
    assert run.scratch_trees() == []


def test_one_target_binary_per_target(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "shlib", "-t", "app", "-t", "libgreet.so", "--target-binary",
                      FIXTURES / "shlib" / "app.c", FIX)
    assert_one_line_error(run, 2, "1 --target-binary for 2 TARGET")


def test_sign_cert_is_for_kernel_modules(patch_build, tmp_path):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "--sign-cert", tmp_path / "cert.pem", FIX)
    assert_one_line_error(run, 2, "--sign-cert is for kernel modules")
