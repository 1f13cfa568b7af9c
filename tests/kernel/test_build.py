"""How patch-build picks what to compile in a kernel tree, checked through its exit codes and messages."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.kernel]


def test_header_change_rebuilds_the_units_including_it(patch_build, tmp_path):
    # fs/proc/fd.h: proc_fd() rewritten with the same meaning; fd.c and base.c include it.
    built = patch_build("header-noop.patch", tmp_path)
    assert built.returncode == 3, built.stderr
    assert "building 2 original unit(s)" in built.stderr
    assert "no functional change: fs/proc/base.c, fs/proc/fd.c compiled to the same code" in built.stderr
    assert not list(tmp_path.glob("*.ko"))


def test_target_filter(patch_build, tmp_path):
    # -t names the objects to patch: a vmlinux fix is nothing for binfmt_misc.
    built = patch_build("cmdline-prefix.patch", tmp_path, "-t", "binfmt_misc")
    assert built.returncode == 3, built.stderr
    assert "fs/proc/cmdline.c belongs to vmlinux, not a -t target" in built.stderr
    assert not list(tmp_path.glob("*.ko"))
