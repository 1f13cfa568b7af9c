"""False changes and false refusals of the kernel differ, on small units compiled against the Debian kernel tree
(tests/kernel/kernel_unit.py: kbuild's flags and objtool, no boot): what moved without changing is unchanged,
what changed is still found.

- `.altinstr_aux`: static_cpu_has() slow paths, one block per use; a block added for another function moves a
  function's block without changing it.
"""
from __future__ import annotations

import pytest

from diffobj.diff import DiffOptions, diff_objects
from kernel_unit import compile_unit

pytestmark = [pytest.mark.kernel]


def _diff(kenv, tmp_path, orig: str, patched: str, **options):
    o = compile_unit(kenv.source, tmp_path / "orig", orig)
    p = compile_unit(kenv.source, tmp_path / "patched", patched)
    return diff_objects(str(o), str(p), DiffOptions(kernel=True, objname="vmlinux", **options))


def _changed(result) -> list[str]:
    return sorted(c.name for c in result.changed_functions)


AUX = """#include <linux/module.h>
#include <asm/cpufeature.h>

int first(int a)
{
%s	return a * 3;
}

int second(int a)
{
	if (static_cpu_has(%s))
		return a + 1;
	return a - 1;
}
"""
PCID_PATH = "\tif (static_cpu_has(X86_FEATURE_PCID))\n\t\treturn a * 5;\n"


def test_altinstr_aux_block_moved_is_no_change(kenv, tmp_path):
    result = _diff(kenv, tmp_path, AUX % ("", "X86_FEATURE_AVX"), AUX % (PCID_PATH, "X86_FEATURE_AVX"))
    assert _changed(result) == ["first"] and not result.errors, result.report()


def test_altinstr_aux_block_changed_is_a_change(kenv, tmp_path):
    result = _diff(kenv, tmp_path, AUX % ("", "X86_FEATURE_AVX"), AUX % ("", "X86_FEATURE_AVX2"))
    assert _changed(result) == ["second"] and not result.errors, result.report()
    assert "code it uses in .altinstr_aux changed" in result.changed_functions[0].reasons
