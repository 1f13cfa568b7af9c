"""False changes and false refusals of the kernel differ, on small units compiled against the Debian kernel tree
(tests/kernel/kernel_unit.py: kbuild's flags and objtool, no boot): what moved without changing is unchanged,
what changed is still found.

- `.altinstr_aux`: static_cpu_has() slow paths, one block per use; a block added for another function moves a
  function's block without changing it.
- dynamic debug descriptors (`__dyndbg`, numbered by `__COUNTER__`): moved lines, renumbered names, a new call
  site beside existing ones.
- new data in a section a section attribute names: refused, without advising -fdata-sections to a build that
  has it.
- moved lines: WARN_ON() (line in `__bug_table`), fortify's "field ... at FILE:LINE" string, and `__LINE__`
  given to pr_err() (unchanged given the patch's line shifts).
"""
from __future__ import annotations

import subprocess

import pytest

from patch_build.diffobj.diff import DiffOptions, diff_objects
from patch_build.diffobj.model import OutputObject
from patch_build.report.patches import line_shifts
from kernel_unit import compile_pair

pytestmark = [pytest.mark.kernel]


def _diff(kenv, sizes, tmp_path, orig: str, patched: str, **options):
    o, p = compile_pair(kenv.source, tmp_path, orig, patched)
    return diff_objects(str(o), str(p), DiffOptions(kernel=True, objname="vmlinux", struct_sizes=sizes, **options))


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


def test_altinstr_aux_block_moved_is_no_change(kenv, kernel_struct_sizes, tmp_path):
    result = _diff(kenv, kernel_struct_sizes, tmp_path, AUX % ("", "X86_FEATURE_AVX"), AUX % (PCID_PATH, "X86_FEATURE_AVX"))
    assert _changed(result) == ["first"] and not result.errors, result.report()


def test_altinstr_aux_block_changed_is_a_change(kenv, kernel_struct_sizes, tmp_path):
    result = _diff(kenv, kernel_struct_sizes, tmp_path, AUX % ("", "X86_FEATURE_AVX"), AUX % ("", "X86_FEATURE_AVX2"))
    assert _changed(result) == ["second"] and not result.errors, result.report()
    assert "code it uses in .altinstr_aux changed" in result.changed_functions[0].reasons


DYNDBG = """#include <linux/module.h>
#include <linux/printk.h>
{top}
int f0(int a)
{{
	return a * 3;
}}

int f1(int a)
{{
{f1_extra}	pr_debug("f1 %d\\n", a);
	return a + {f1_add};
}}

int f2(int a)
{{
	pr_debug("f2 %d\\n", a);
	return a + 2;
}}
"""


def _dyndbg(top: str = "", f1_extra: str = "", f1_add: int = 1) -> str:
    return DYNDBG.format(top=top, f1_extra=f1_extra, f1_add=f1_add)


def _descriptors(out: OutputObject) -> list[tuple[int, str]]:
    """(size, format string) of each `__dyndbg` section the output carries."""
    found = []
    for sec in out.sections:
        if sec.name == "__dyndbg":
            fmt = next(r for r in sec.relocations if r.offset == 24)  # struct _ddebug.format
            data = fmt.symbol.section.data
            found.append((len(sec.data), data[fmt.addend:data.index(b"\0", fmt.addend)].decode()))
    return found


def _undefined(out: OutputObject) -> set[str]:
    return {s.name for s in out.symbols if s.section is None and s.shndx is None}


def test_dyndbg_lines_moved_is_no_change(kenv, kernel_struct_sizes, tmp_path):
    result = _diff(kenv, kernel_struct_sizes, tmp_path, _dyndbg(), _dyndbg(top="/* two lines\n   above every call site */"))
    assert not result.has_changes, result.report()


def test_dyndbg_renumbered_by_counter_is_correlated(kenv, kernel_struct_sizes, tmp_path):
    """An `#include` that uses `__COUNTER__` renumbers every descriptor: f2 is unchanged, and f1 keeps using the
    running descriptor of its call site."""
    result = _diff(kenv, kernel_struct_sizes, tmp_path, _dyndbg(), _dyndbg(top="#if __COUNTER__ + __COUNTER__ >= 0\n#endif", f1_add=7))
    assert _changed(result) == ["f1"] and not result.errors, result.report()
    assert _descriptors(result.output) == []
    orig_descriptors = {s.name for s in result.orig.symbols if s.name.startswith("__UNIQUE_ID_ddebug")}
    patched_descriptors = {s.name for s in result.patched.symbols if s.name.startswith("__UNIQUE_ID_ddebug")}
    assert not orig_descriptors & patched_descriptors, "the objects do not test a renumbering"
    used = [n for n in _undefined(result.output) if "__UNIQUE_ID_ddebug" in n]
    assert len(used) == 1 and used[0].split(".klp.sym.vmlinux.")[1].split(",")[0] in orig_descriptors, used


def test_dyndbg_new_call_site_is_carried(kenv, kernel_struct_sizes, tmp_path):
    """A pr_debug() added to f1 (before its existing one): its descriptor is new data the patch carries, beside
    the existing ones it shares the table with; f2, whose descriptor it renumbers, is unchanged and its
    descriptor neither carried nor refused."""
    result = _diff(kenv, kernel_struct_sizes, tmp_path, _dyndbg(), _dyndbg(f1_extra='\tpr_debug("new %d\\n", a);\n', f1_add=7))
    assert _changed(result) == ["f1"] and not result.errors, result.report()
    assert _descriptors(result.output) == [(56, "new %d\n")]
    assert len([n for n in _undefined(result.output) if "__UNIQUE_ID_ddebug" in n]) == 1


READ_MOSTLY = """#include <linux/module.h>
#include <linux/cache.h>

static int old_limit __read_mostly = 4;
{new}
int limit(int a)
{{
	return a > old_limit ? old_limit : a{use};
}}
"""


def test_new_data_in_an_attribute_section_is_refused_without_flag_advice(kenv, kernel_struct_sizes, tmp_path):
    result = _diff(kenv, kernel_struct_sizes, tmp_path, READ_MOSTLY.format(new="", use=""),
                   READ_MOSTLY.format(new="static int new_limit __read_mostly = 5;", use=" + new_limit"))
    reasons = {e.symbol: e.reason for e in result.errors}
    assert "section attribute" in reasons.get("new_limit", ""), result.report()
    assert not any("-fdata-sections" in r for r in reasons.values()), reasons


LINES = """#include <linux/module.h>
#include <linux/printk.h>
#include <linux/bug.h>
#include <linux/string.h>
{top}
struct holder {{
	int a;
	char buf[8];
	int b;
}};

int warned(int a)
{{
	WARN_ON(a == 3);
	return a + 1;
}}

int reported(int a)
{{
	if (a > 9)
		pr_err("%s:%d: %d\\n", __func__, __LINE__, a);
	return a;
}}

void copy(struct holder *h, const void *src, size_t n)
{{
	memcpy(h->buf, src, n);
}}
"""


def _patch(tmp_path, orig: str, patched: str):
    for side, text in (("a", orig), ("b", patched)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "unit.c").write_text(text)
    proc = subprocess.run(["diff", "-u", "a/unit.c", "b/unit.c"], cwd=tmp_path, capture_output=True, text=True)
    (tmp_path / "fix.patch").write_text(proc.stdout)
    return tmp_path / "fix.patch"


def test_moved_lines_in_kernel_code(kenv, kernel_struct_sizes, tmp_path):
    orig, patched = LINES.format(top=""), LINES.format(top="/* two lines\n * added */")
    o, p = compile_pair(kenv.source, tmp_path, orig, patched)
    assert b'"h->buf" at ' in o.read_bytes()  # fortify's "field ... at FILE:LINE" string
    without = diff_objects(str(o), str(p), DiffOptions(kernel=True, objname="vmlinux", struct_sizes=kernel_struct_sizes))
    # pr_err()'s arguments are any integers: only the patch tells its __LINE__ (in reported.cold) moved.
    assert _changed(without) == ["reported"] and not without.errors, without.report()
    shifts = line_shifts([_patch(tmp_path, orig, patched)])
    given = diff_objects(str(o), str(p), DiffOptions(kernel=True, objname="vmlinux", line_shifts=shifts,
                                                       struct_sizes=kernel_struct_sizes))
    assert not given.has_changes, given.report()
