"""The patch-build command line: which builder a source tree gets, usage errors."""
from __future__ import annotations

from buildenv import FIXTURES

from patch_build.kbuild.cli import is_kernel_tree


def test_kernel_tree_detection(tmp_path):
    (tmp_path / "arch" / "x86").mkdir(parents=True)
    (tmp_path / "Kbuild").write_text("obj-y += kernel/\n")
    (tmp_path / "Makefile").write_text("# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 1\n")
    assert is_kernel_tree(tmp_path)
    (tmp_path / "Makefile").write_text("all:\n\tcc -o prog prog.c\n")
    assert not is_kernel_tree(tmp_path)
    assert not is_kernel_tree(FIXTURES / "cprog")


def test_usage_error_exits_2(patch_build):
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog")  # no PATCH
    assert run.returncode == 2
    assert "Missing argument" in run.stderr and "Traceback" not in run.stderr
