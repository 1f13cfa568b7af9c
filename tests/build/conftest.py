"""Fixtures of the build tests: run the real `patch-build` on fixtures/build with real gcc, make, cmake."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from buildenv import REPO, Run


@pytest.fixture
def patch_build(tmp_path):
    """Run `python -m patch_build.kbuild ARGS` (the patch-build console script) with its own TMPDIR."""

    def run(*args: str | os.PathLike) -> Run:
        tmpdir = tmp_path / f"tmp{len(list(tmp_path.glob('tmp*')))}"
        tmpdir.mkdir()
        env = dict(os.environ, TMPDIR=str(tmpdir))
        env.pop("PATCH_BUILD_DEBUG", None)
        proc = subprocess.run([sys.executable, "-m", "patch_build.kbuild", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path)
        return Run(proc.returncode, proc.stdout, proc.stderr, tmpdir)

    return run
