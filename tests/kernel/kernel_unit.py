"""Small C units compiled against the prepared Debian kernel tree as patch-build compiles a patch's units
(kbuild's own flags, objtool, plus patch-build's KCFLAGS), without touching the tree: an external-module build
(`make M=DIR`) of DIR/NAME.c. A couple of seconds a unit, no boot."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kbuild.kernel import KCFLAGS


def compile_unit(source_tree: Path, workdir: Path, text: str, name: str = "unit") -> Path:
    """Compile `text` as workdir/NAME.c; return NAME.o."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{name}.c").write_text(text)
    (workdir / "Kbuild").write_text(f"obj-m := {name}.o\n")
    proc = subprocess.run(["make", "-s", "-C", os.fspath(source_tree), f"M={workdir}", f"KCFLAGS={KCFLAGS}",
                           f"{name}.o"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / f"{name}.o"
