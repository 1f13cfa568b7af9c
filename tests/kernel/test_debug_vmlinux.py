"""`patch-build -v VMLINUX` with the vmlinux of Debian's linux-image-RELEASE-dbg: the CI path, where the
target kernel is not running and its symbols come from the debug package (issue 10).

The livepatch core numbers same-named symbols (sympos) in kallsyms order; the kallsyms of the booted image
(debian_kernel.py) is the reference the ELF symbol table must agree with.
"""
from __future__ import annotations

import json
import os

import pytest

from patch_build.kbuild.kernel_target import kernel_release
from patch_build.kbuild.kernel_symbols import read_elf_symbols, read_system_map
from patch_build.kbuild.options import BuildOptions

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_debug_vmlinux_orders_symbols_as_kallsyms(kenv, vmlinux_dbg):
    elf = read_elf_symbols(vmlinux_dbg, "vmlinux", by_address=True)
    kallsyms = read_system_map(kenv.kallsyms)["vmlinux"]
    names = {s.name for s in kallsyms.symbols}
    duplicated = {n for n in names if len(kallsyms.named(n)) > 1}
    assert len(duplicated) > 500, "the booted kernel's kallsyms should have many same-named local symbols"

    def positions(table, name):  # sympos N is the N-th of these addresses
        return [table.symbols[i].address for i in table.named(name)]

    differ = sorted(n for n in names if positions(elf, n) != positions(kallsyms, n))
    assert not differ, f"{len(differ)} names ordered or counted differently, e.g. {differ[:10]}"


def test_build_against_debug_vmlinux(kenv, vmlinux_dbg, patch_build, tmp_path):
    # -v read the release from the banner (a closed mmap once made it a TypeError); seq_show of fs/proc/fd.c
    # is the first of two seq_show: the same module as with the booted kernel's kallsyms.
    assert kernel_release(BuildOptions(patches=[], srcdir=kenv.source, vmlinux=vmlinux_dbg)) == kenv.release
    with_vmlinux = patch_build("fdinfo-sympos.patch", tmp_path / "vmlinux", "-v", os.fspath(vmlinux_dbg))
    with_kallsyms = patch_build("fdinfo-sympos.patch", tmp_path / "kallsyms")
    for built in (with_vmlinux, with_kallsyms):
        assert built.ok, built.stderr
    report = json.loads(with_vmlinux.module.with_suffix(".report.json").read_text())
    [change] = [f for f in report["objects"][0]["functions"] if f["status"] == "changed"]
    assert (change["old_name"], change["sympos"]) == ("seq_show", 1)
    assert [t["kernel_release"] for t in report["targets"]] == [kenv.release]
    assert with_vmlinux.module.read_bytes() == with_kallsyms.module.read_bytes()
