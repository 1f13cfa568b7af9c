"""Helpers of the report tests: a real unit (data/server.c) built with gcc before and after a real patch, diffed
with the real differ. (Imported by name: a `conftest` import would resolve to another folder's.)"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from patch_build.diffobj.diff import DiffOptions, diff_objects
from patch_build.report.collect import build_report, object_report

DATA = Path(__file__).parent / "data"
CFLAGS = ["-O2", "-g", "-ffunction-sections", "-fdata-sections"]


@dataclass
class Built:
    tree: Path  # holds orig/ and patched/ source trees
    orig: Path  # orig/server.o
    patched: Path  # patched/server.o
    patch: Path


def build_pair(workdir: Path, patch: str, cflags=CFLAGS) -> Built:
    """Copy server.c into orig/ and patched/, apply `patch` to patched/ with patch(1), compile both."""
    objects = []
    for side in ("orig", "patched"):
        src = workdir / side
        src.mkdir(parents=True)
        shutil.copy(DATA / "server.c", src / "server.c")
        if side == "patched":
            subprocess.run(["patch", "-s", "-p1", "-i", str(DATA / patch)], cwd=src, check=True)
        # as patch-build's compiler wrapper does: the build directory is not recorded (reproducible objects)
        subprocess.run(["gcc", *cflags, f"-ffile-prefix-map={src}=.", "-c", "server.c", "-o", "server.o"],
                       cwd=src, check=True)
        objects.append(src / "server.o")
    return Built(workdir, objects[0], objects[1], DATA / patch)


def diff_and_report(built: Built, *, patches=True, name="fix", env=None):
    result = diff_objects(str(built.orig), str(built.patched), DiffOptions(objname="server"))
    patch_files = [built.patch] if patches else []
    # the patched tree: where the report reads the unit's source (macro and type names)
    obj = object_report(result, source="server.c", patches=patch_files, relative_to=built.tree / "patched")
    report = build_report(name, "user", [obj], patches=patch_files, relative_to=built.tree,
                          details={"build command": "gcc -c server.c"}, env=env or {})
    return result, report
