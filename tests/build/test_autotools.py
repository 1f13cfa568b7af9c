"""An autotools program, configured and built in SRCDIR the ordinary way (config.status names plain `gcc`)."""
from __future__ import annotations

import subprocess

from buildenv import FIXTURES, build_id, copy_fixture
from support import elfcheck

from patch_build.patchformat.module import read_module


def test_module_of_autotools_program(patch_build, tmp_path):
    src = copy_fixture("autoapp", tmp_path)
    subprocess.run(["sh", "-c", "autoreconf -i && ./configure && make"], cwd=src, check=True, capture_output=True)
    run = patch_build("-s", src, "-t", "autoapp", "-o", tmp_path / "out", FIXTURES / "autoapp-fix.patch")
    assert run.returncode == 0, run.stderr

    info = read_module(tmp_path / "out" / "autoapp-fix.kpatch")
    assert info.valid, info.problems
    assert [(t.name, t.build_id) for t in info.targets] == [("autoapp", build_id(src / "autoapp"))]
    assert [(f.name, f.objname) for f in info.funcs] == [("to_fahrenheit", "autoapp")]
    assert elfcheck.readelf_problems(tmp_path / "out" / "autoapp-fix.kpatch") == []
