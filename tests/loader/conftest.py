"""Fixtures of the loader tests: the fixture server built, its fixes built with the real patch-build, the
server running."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from patch_build.kbuild.options import BuildOptions
from patch_build.kbuild.userspace import build_user_patch
from livetarget import FIXTURE, Builds, Server

CET_CFLAGS = "-O2 -g -Wall -fcf-protection=full"  # functions start with endbr64


def _make(tree: Path, *args: str) -> None:
    subprocess.run(["make", "-s", *args], cwd=tree, check=True, capture_output=True)


@pytest.fixture(scope="session")
def builds(tmp_path_factory) -> Builds:
    root = tmp_path_factory.mktemp("server")
    src, deployed, variant, cet = root / "src", root / "deployed", root / "variant", root / "cet"
    for tree in (src, deployed, variant, cet):
        shutil.copytree(FIXTURE, tree)
    _make(deployed)
    _make(variant, "CFLAGS=-O1 -g -Wall")
    _make(cet, f"CFLAGS={CET_CFLAGS}")
    out = root / "modules"
    modules = {}
    scratch, saved = root / "tmp", tempfile.tempdir
    scratch.mkdir()
    tempfile.tempdir = str(scratch)  # patch-build's scratch trees: here, not in the shared /tmp
    try:
        for name, targets, patches, tree, build_cmd in (
                ("incr-fix", ["server"], ["incr-fix.patch"], deployed, "make"),
                ("incr-strict", ["server"], ["incr-fix.patch", "incr-strict.patch"], deployed, "make"),
                ("hold-reply", ["server"], ["hold-reply.patch"], deployed, "make"),
                ("hits-unit", ["server"], ["hits-unit.patch"], deployed, "make"),
                ("sum-tag", ["server"], ["sum-tag.patch"], deployed, "make"),
                ("sum-fix", ["libsrvutil.so"], ["sum-fix.patch"], deployed, "make"),
                ("both", ["server", "libsrvutil.so"], ["incr-fix.patch", "sum-fix.patch"], deployed, "make"),
                ("incr-fix-cet", ["server"], ["incr-fix.patch"], cet, f"make 'CFLAGS={CET_CFLAGS}'")):
            options = BuildOptions(patches=[FIXTURE / p for p in patches], srcdir=src, targets=targets, name=name,
                                   outdir=out, jobs=1, build_cmd=build_cmd, target_binaries=[tree / t for t in targets])
            modules[name] = build_user_patch(options).module
    finally:
        tempfile.tempdir = saved
    return Builds(src, deployed, variant, cet, modules)


@pytest.fixture
def server(builds):
    srv = Server(builds.deployed)
    yield srv
    srv.stop()
