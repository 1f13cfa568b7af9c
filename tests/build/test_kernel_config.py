"""A kernel tree's configuration as kbuild reads it (common.kconfig), and what the module link makes of it."""
from __future__ import annotations

from patch_build.common.kconfig import auto_conf
from patch_build.linker.kernel import objtool_at_module_link


def _tree(tmp_path, text: str):
    (tmp_path / "include" / "config").mkdir(parents=True)
    (tmp_path / "include" / "config" / "auto.conf").write_text(text)
    return tmp_path


def test_auto_conf_values(tmp_path):
    tree = _tree(tmp_path, '#\n# Automatically generated file; DO NOT EDIT.\nCONFIG_OBJTOOL=y\n'
                           'CONFIG_MODULE_SIG_HASH="sha512"\nCONFIG_NR_CPUS=8192\n# CONFIG_X is not set\n')
    assert auto_conf(tree) == {"CONFIG_OBJTOOL": "y", "CONFIG_MODULE_SIG_HASH": "sha512", "CONFIG_NR_CPUS": "8192"}
    assert auto_conf(tmp_path / "absent") == {}


def test_objtool_at_module_link():
    """scripts/Makefile.lib's delay-objtool: IBT (Debian's 6.12) or clang LTO, with objtool at all."""
    assert objtool_at_module_link({"CONFIG_OBJTOOL": "y", "CONFIG_X86_KERNEL_IBT": "y"})
    assert objtool_at_module_link({"CONFIG_OBJTOOL": "y", "CONFIG_LTO_CLANG": "y"})
    assert not objtool_at_module_link({"CONFIG_OBJTOOL": "y"})  # Debian's 6.1: objtool at each compile
    assert not objtool_at_module_link({"CONFIG_X86_KERNEL_IBT": "y"})
