"""fixtures/build/server, the multi-threaded program the loader tests patch live: it runs, and its fix builds.

How the loader tests use it: copy the fixture, `make` (the deployed ./server), start it, then
`build_user_patch(BuildOptions(patches=[FIXTURES/"server-fix.patch"], srcdir=copy, targets=["server"], outdir=...))`.
"""
from __future__ import annotations

import subprocess

from buildenv import FIXTURES, build_id, copy_fixture, make

from patch_build.kbuild.options import BuildOptions
from patch_build.kbuild.userspace import build_user_patch
from patch_build.patchformat.module import read_module


def test_server_runs_and_its_fix_builds(tmp_path):
    src = copy_fixture("server", tmp_path)
    make(src)
    out = subprocess.run(["timeout", "0.5", "./server", "3", "50"], cwd=src, capture_output=True, text=True).stdout
    threads = {line.split()[0] for line in out.splitlines()}
    assert threads == {"thread=0", "thread=1", "thread=2"}
    assert "version=v1" in out

    result = build_user_patch(BuildOptions(patches=[FIXTURES / "server-fix.patch"], srcdir=src, targets=["server"],
                                           outdir=tmp_path / "out"))
    info = read_module(result.module)
    assert info.valid, info.problems
    assert [(t.name, t.build_id) for t in info.targets] == [("server", build_id(src / "server"))]
    assert {"reply_code", "handler_version"} <= {f.name for f in info.funcs}
    assert result.scratch is None and set(result.timings) >= {"original build", "patched build", "diff", "link"}
