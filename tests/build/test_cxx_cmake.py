"""A C++ program built with CMake, whose SRCDIR already holds a configured and built tree (a CMake cache naming
the real compiler and SRCDIR's paths): the scratch build must configure afresh with the wrappers. The fix changes
a method, a string and a template in a header that two units instantiate."""
from __future__ import annotations

import subprocess

from buildenv import FIXTURES, build_id, copy_fixture, tree_digest
from support import elfcheck

from patch_build.patchformat.module import read_module

BUILD = "cmake -S . -B build >/dev/null && cmake --build build"


def test_module_of_cmake_cxx_program(patch_build, tmp_path):
    src = copy_fixture("cxxapp", tmp_path)
    subprocess.run(["sh", "-c", BUILD], cwd=src, check=True, capture_output=True)
    before = tree_digest(src)
    run = patch_build("-s", src, "-t", "build/cxxapp", "--build-cmd", BUILD, "-o", tmp_path / "out",
                      FIXTURES / "cxxapp-fix.patch")
    assert run.returncode == 0, run.stderr
    assert tree_digest(src) == before
    assert run.scratch_trees() == []

    module = tmp_path / "out" / "cxxapp-fix.kpatch"
    info = read_module(module)
    assert info.valid, info.problems
    assert [(t.name, t.build_id) for t in info.targets] == [("cxxapp", build_id(src / "build" / "cxxapp"))]
    assert sorted((f.name, f.objname, f.sympos) for f in info.funcs) == [
        ("_ZN3geo7roundedIdEET_S1_", "cxxapp", 0),  # geo::rounded<double>, in both changed units: once
        ("_ZN3geo8describeB5cxx11ERKNS_5ShapeE", "cxxapp", 0),  # geo::describe: changed string
        ("_ZNK3geo6Circle4areaEv", "cxxapp", 0),  # geo::Circle::area: changed constant
    ]
    assert elfcheck.readelf_problems(module) == []
