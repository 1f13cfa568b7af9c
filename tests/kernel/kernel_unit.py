"""Small C units compiled against the prepared Debian kernel tree as patch-build compiles a patch's units
(kbuild's own flags, objtool, plus patch-build's KCFLAGS), without touching the tree: an external-module build
(`make M=DIR`) of DIR/unit.c. A few seconds a unit, no boot."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from patch_build.kbuild.kernel_tree import KCFLAGS


def compile_pair(source_tree: Path, workdir: Path, orig: str, patched: str) -> tuple[Path, Path]:
    """The unit built from `orig`, then from `patched`, in one directory (one `__FILE__`, as a tree built before
    and after a patch): workdir/orig.o and workdir/patched.o."""
    build = workdir / "build"
    build.mkdir(parents=True, exist_ok=True)
    (build / "Kbuild").write_text("obj-m := unit.o\n")
    for side, text in (("orig", orig), ("patched", patched)):
        (build / "unit.c").write_text(text)
        proc = subprocess.run(["make", "-s", "-C", os.fspath(source_tree), f"M={build}", f"KCFLAGS={KCFLAGS}",
                               "unit.o"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        shutil.copy(build / "unit.o", workdir / f"{side}.o")
    return workdir / "orig.o", workdir / "patched.o"
