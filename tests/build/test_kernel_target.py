"""The kernel a livepatch is for, without a kernel tree: its module names (which the livepatch must not take),
its release, and the symbol tables of its modules, read from real objects (gcc) in a /lib/modules layout."""
from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from patch_build.common.errors import InputError
from patch_build.kbuild.kernel_symbols import KernelSymbols, read_exports
from patch_build.kbuild.kernel_target import (
    MODULE_NAME_MAX,
    check_module_name,
    kernel_module_names,
    kernel_release,
    livepatch_name,
)
from patch_build.kbuild.options import BuildOptions
from support import toolchain


class Notes:
    def __init__(self):
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


def _moddir(root: Path) -> Path:
    """/lib/modules/RELEASE of a kernel with ext4 loadable, printk built in with parameters only, and an
    xz-compressed foo-bar module on disk that no list names."""
    moddir = root / "lib" / "modules" / "6.1.0-test"
    (moddir / "kernel" / "drivers").mkdir(parents=True)
    (moddir / "modules.dep").write_text("kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz\n")
    (moddir / "modules.builtin").write_text("kernel/fs/binfmt_script.ko\n")
    (moddir / "modules.builtin.modinfo").write_bytes(b"printk.parm=time:Show timing information\0")
    (moddir / "kernel" / "drivers" / "foo-bar.ko.xz").write_bytes(b"")
    return moddir


def test_livepatch_name():
    assert livepatch_name(BuildOptions(patches=[Path("fs-fix.patch")], srcdir=Path("."))) == "livepatch_fs_fix"
    assert livepatch_name(BuildOptions(patches=[Path("x.patch")], srcdir=Path("."), name="my-fix")) == "my_fix"
    long = livepatch_name(BuildOptions(patches=[Path("a" * 80 + ".patch")], srcdir=Path(".")))
    assert len(long) == MODULE_NAME_MAX and long.startswith("livepatch_a")


def test_module_names_of_the_kernel(tmp_path):
    assert kernel_module_names(_moddir(tmp_path)) == {"ext4", "binfmt_script", "printk", "foo_bar"}


def test_a_name_the_kernel_has_is_refused(tmp_path):
    moddir, notes = _moddir(tmp_path), Notes()
    with pytest.raises(InputError, match="module name foo-bar: the kernel 6.1.0-test has a module of that name"):
        check_module_name("foo-bar", "6.1.0-test", [moddir], notes)
    check_module_name("livepatch_fix", "6.1.0-test", [moddir], notes)
    assert notes.notes == []
    check_module_name("livepatch_fix", "6.1.0-test", [], notes)  # no list to check against: said, not refused
    assert notes.notes and "not checked against the kernel's modules" in notes.notes[0]


def test_release_from_the_symbol_table_name_and_the_headers(tmp_path):
    options = BuildOptions(patches=[], srcdir=tmp_path, system_map=tmp_path / "kallsyms-6.1.0-57-amd64")
    assert kernel_release(options) == "6.1.0-57-amd64"
    (tmp_path / "include" / "generated").mkdir(parents=True)
    (tmp_path / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.12.9-test"\n')
    assert kernel_release(BuildOptions(patches=[], srcdir=tmp_path, headers=tmp_path)) == "6.12.9-test"


def test_module_symbols_from_a_compressed_module(tmp_path):
    """A kallsyms dump gives vmlinux's table; a module it does not hold is read from its .ko.xz on first use."""
    moddir = _moddir(tmp_path)
    src = tmp_path / "foo.c"
    src.write_text("static int hidden(int x) { return x + 1; }\nint shown(int x) { return hidden(x) * 2; }\n")
    obj = toolchain.compile_object(src, tmp_path / "foo.o", ["-O0"])
    (moddir / "kernel" / "drivers" / "foo-bar.ko.xz").write_bytes(lzma.compress(obj.read_bytes()))
    kallsyms = tmp_path / "kallsyms-6.1.0-test"
    kallsyms.write_text("".join(f"ffffffff81{i:06x} T vmlinux_function_{i}\n" for i in range(120)))
    notes = Notes()
    symbols = KernelSymbols(None, kallsyms, "6.1.0-test", [moddir], tmp_path / "modules", notes)
    assert symbols.vmlinux is not None and symbols.vmlinux.has_function("vmlinux_function_7")
    table = symbols.table("foo_bar")
    assert table is not None and table.has_function("hidden") and table.has_function("shown")
    assert symbols.table("foo_bar") is table  # read once
    assert symbols.table("absent") is None and "no symbol table for module absent" in notes.notes[-1]


def test_exports_from_the_headers_else_the_tree(tmp_path):
    headers, tree = tmp_path / "headers", tmp_path / "tree"
    headers.mkdir()
    tree.mkdir()
    (tree / "Module.symvers").write_text("0x1\tprintk_tree\tvmlinux\tEXPORT_SYMBOL\t\n")
    assert read_exports(headers, tree) == {"printk_tree": "vmlinux"}
    (headers / "Module.symvers").write_text("0x2\tjbd2_journal_start\tfs/jbd2/jbd2\tEXPORT_SYMBOL\t\n")
    assert read_exports(headers, tree) == {"jbd2_journal_start": "jbd2"}
    (headers / "Module.symvers").write_text("")
    (tree / "Module.symvers").write_text("")
    with pytest.raises(InputError, match="no Module.symvers"):
        read_exports(headers, tree)
