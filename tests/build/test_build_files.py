"""A patch that changes the build system runs its code during patch-build: warned about in the step log and the
report, refused before anything is built with --no-build-changes."""
from __future__ import annotations

import json

from buildenv import FIXTURES, assert_one_line_error, tiny_kernel_tree

from patch_build.kbuild.tree import build_files, is_build_file

CALC_AND_MAKEFILE = """--- a/Makefile
+++ b/Makefile
@@ -1,6 +1,7 @@
 # A small multi-file C program; object dependencies on headers are tracked (-MMD) so a header change
 # rebuilds every unit that includes it.
 CFLAGS ?= -O2 -g -Wall
+$(shell touch {marker})
 OBJS = main.o calc.o msg.o
 
 prog: $(OBJS)
--- a/calc.c
+++ b/calc.c
@@ -2,7 +2,7 @@
 
 int compute(int x)
 {{
-	return x * 2 + 1;
+	return x * 2 + 3;
 }}
 
 int scaled(int v)
"""


def _patch(tmp_path):
    marker = tmp_path / "ran-the-patched-makefile"
    patch = tmp_path / "makefile.patch"
    patch.write_text(CALC_AND_MAKEFILE.format(marker=marker))
    return patch, marker


def test_build_file_change_is_refused_before_building(patch_build, tmp_path):
    patch, marker = _patch(tmp_path)
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path / "out", "--no-build-changes", patch)
    assert_one_line_error(run, 1, "Makefile", "--no-build-changes")
    assert "building original" not in run.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "makefile.kpatch").exists()
    report = json.loads((tmp_path / "out" / "makefile.report.json").read_text())
    assert report["status"] == "refused"
    assert [(w["kind"], w["symbol"]) for w in report["warnings"]] == [("build-files", "Makefile")]
    assert run.scratch_trees() == []


def test_build_file_change_is_warned_about(patch_build, tmp_path):
    patch, marker = _patch(tmp_path)
    run = patch_build("-s", FIXTURES / "cprog", "-t", "prog", "-o", tmp_path / "out", patch)
    assert run.returncode == 0, run.stderr
    assert marker.exists()  # what the warning is about: the patch's Makefile ran
    [warning] = [line for line in run.stderr.splitlines() if "warning:" in line]
    assert "build file Makefile" in warning
    assert run.stderr.index(warning) < run.stderr.index("building original")  # said before it runs
    report = json.loads((tmp_path / "out" / "makefile.report.json").read_text())
    assert report["status"] == "built"
    assert [(w["kind"], w["symbol"]) for w in report["warnings"]] == [("build-files", "Makefile")]
    assert "build file Makefile" in (tmp_path / "out" / "makefile.report.md").read_text()
    assert "build file Makefile" in (tmp_path / "out" / "makefile.report.html").read_text()


def test_kernel_build_file_change_is_refused(patch_build, tmp_path):
    # Refused from the patch alone, before the tree is prepared or anything compiled (the tree could not be).
    ksrc, headers, system_map = tiny_kernel_tree(tmp_path)
    patch = tmp_path / "kbuild.patch"
    patch.write_text("--- a/kernel/Makefile\n+++ b/kernel/Makefile\n@@ -0,0 +1 @@\n+obj-y += fix.o\n")
    run = patch_build("-s", ksrc, "--headers", headers, "--system-map", system_map, "-o", tmp_path / "out", patch)
    assert_one_line_error(run, 1, "kernel/Makefile: build file")
    assert not (ksrc / "kernel" / "Makefile").exists()
    assert json.loads((tmp_path / "out" / "livepatch_kbuild.report.json").read_text())["status"] == "refused"


def test_which_files_are_build_files(tmp_path):
    for path in ("Makefile", "src/Makefile.am", "Makefile.in", "GNUmakefile", "rules.mk", "CMakeLists.txt",
                 "cmake/FindFoo.cmake", "configure", "configure.ac", "m4/ax_foo.m4", "meson.build", "Kbuild",
                 "drivers/Kconfig", "SConstruct"):
        assert is_build_file(path), path
    for path in ("calc.c", "include/util.h", "docs/makefile.txt", "config.h.in.txt"):
        assert not is_build_file(path), path
    patch = tmp_path / "p.patch"
    patch.write_text("--- a/build.sh\n+++ b/build.sh\n@@ -1 +1 @@\n-make\n+make -j2\n"
                     "--- a/calc.c\n+++ b/calc.c\n@@ -1 +1 @@\n-a\n+b\n")
    assert build_files([patch], "sh ./build.sh") == ["build.sh"]  # the build command's own script
    assert build_files([patch], "make") == []
