"""Compiling a kernel patch's units, in a tree of kbuild's shape small enough to build in a second: real make,
real gcc, kbuild's recorded `.OBJ.cmd` command lines."""
from __future__ import annotations

import os

import pytest

from patch_build.common.errors import NoChange
from patch_build.kbuild.kernel_tree import KCFLAGS, KernelTree
from patch_build.kbuild.kernel_units import Unit, compile_units


def _tree(tmp_path, recorded: list[str]):
    """KSRC with a Makefile that builds nothing, `auto.conf` older than the `.OBJ.cmd` of each recorded unit
    (kbuild compiled it with our flags since the tree was configured)."""
    ksrc = tmp_path / "ksrc"
    (ksrc / "include" / "config").mkdir(parents=True)
    (ksrc / "include" / "config" / "auto.conf").write_text("CONFIG_X=y\n")
    os.utime(ksrc / "include" / "config" / "auto.conf", (1, 1))
    (ksrc / "Makefile").write_text("all:\n")
    for name in recorded:
        (ksrc / f"{name}.c").write_text(f"int {name}(void) {{ return 1; }}\n")
        cmd = f"gcc {KCFLAGS} -c -o {name}.o {name}.c"
        (ksrc / f".{name}.o.cmd").write_text(f"cmd_{name}.o := {cmd}\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return KernelTree(ksrc, tmp_path / "headers", 2, scratch)


def test_recorded_units_are_kept_when_make_knows_none_of_the_others(tmp_path):
    """A patched header included by a unit built before (recompiled by its recorded line) and by one this
    configuration does not build: the first is diffed. It used to end the build as "no unit this
    configuration builds", because make had found none of the others."""
    tree = _tree(tmp_path, ["built"])
    units = [Unit("built.c", "built.o", optional=True), Unit("unconfigured.c", "unconfigured.o", optional=True)]
    compile_units(tree, units, "original")
    assert [u.obj for u in units] == ["built.o"]
    assert (tree.ksrc / "built.o").is_file()


def test_no_unit_this_configuration_builds(tmp_path):
    tree = _tree(tmp_path, [])
    units = [Unit("unconfigured.c", "unconfigured.o", optional=True)]
    with pytest.raises(NoChange, match="no unit this configuration builds"):
        compile_units(tree, units, "original")
