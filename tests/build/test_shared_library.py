"""A program and the shared library it builds, with the fix in the library: TARGET is the .so (a symlink to the
file the program loads), given along with the program, which the fix leaves alone."""
from __future__ import annotations

import pytest
from buildenv import FIXTURES, build_id, copy_fixture, make
from support import elfcheck

from patch_build.patchformat.module import read_module


@pytest.mark.parametrize("mode", [[], ["--link-diff"]])  # per object; the linked library (issue 13)
def test_module_of_shared_library(patch_build, tmp_path, mode):
    src = copy_fixture("shlib", tmp_path)
    make(src)
    run = patch_build("-s", src, "-t", "app", "-t", "libgreet.so", *mode, "-o", tmp_path / "out",
                      FIXTURES / "shlib-fix.patch")
    assert run.returncode == 0, run.stderr

    module = tmp_path / "out" / "shlib-fix.kpatch"
    info = read_module(module)
    assert info.valid, info.problems
    assert [(t.name, t.build_id) for t in info.targets] == [("libgreet.so.1", build_id(src / "libgreet.so.1"))]
    assert [(f.name, f.objname, f.sympos) for f in info.funcs] == [("greet", "libgreet.so.1", 0)]
    assert elfcheck.readelf_problems(module) == []
    # the library's own global and libc stay references to what the process has loaded
    assert {"greet_count", "snprintf"} <= elfcheck.undefined_names(module)
