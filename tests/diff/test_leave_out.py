"""DiffOptions.leave_out (--only-explained): a function left out is not patched, so what only patching it would
break is no problem: the running function keeps its references (issue 13: with LTO, a fix moved the inlining of
code the patch does not touch, and its functions were refused for a shared static they no longer referenced)."""
from __future__ import annotations

import subprocess

from patch_build.diffobj.diff import DiffOptions, diff_objects

ORIG = """static inline __attribute__((always_inline)) int count(void) { static int n; return ++n; }
int f(int x) { return x + count(); }
int g(int x) { return x * count(); }
int h(int x) { return x * x - 1; }
"""
# f stops counting (it no longer shares count()'s static with g); h is the fix
PATCHED = ORIG.replace("return x + count();", "return x + 1;").replace("return x * x - 1;", "return x * x - 2;")


def _objects(tmp_path):
    paths = []
    for name, text in (("orig", ORIG), ("patched", PATCHED)):
        (tmp_path / f"{name}.c").write_text(text)
        subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-c", "-o", tmp_path / f"{name}.o",
                        tmp_path / f"{name}.c"], check=True)
        paths.append(str(tmp_path / f"{name}.o"))
    return paths


def test_static_shared_with_a_function_left_out(tmp_path):
    orig, patched = _objects(tmp_path)
    patched_all = diff_objects(orig, patched, DiffOptions(objname="prog"))
    assert [e.reason for e in patched_all.errors if e.reason.startswith("static local no longer referenced by f ")]
    left_out = diff_objects(orig, patched, DiffOptions(objname="prog", leave_out=frozenset({"f"})))
    assert left_out.errors == []
    assert [c.name for c in left_out.changed_functions] == ["h"]


SPLIT = """extern void fail(const char *what) __attribute__((cold, noreturn));
int f(int x) { return x; }
int h(int x) { return x * x - 1; }
"""
# f gains a cold part (f.cold: gcc splits off the unlikely call); h is the fix
SPLIT_PATCHED = SPLIT.replace("return x; }", 'if (__builtin_expect(x < 0, 0)) fail("f"); return x; }') \
    .replace("return x * x - 1;", "return x * x - 2;")


def test_new_cold_part_of_a_function_left_out(tmp_path):
    # redis with LTO: a fix elsewhere made gcc split bioCreateCloseJob into a hot and a new cold part; with
    # bioCreateCloseJob left out, its new .cold piece made it "changed" again and the module replaced it.
    paths = []
    for name, text in (("orig", SPLIT), ("patched", SPLIT_PATCHED)):
        (tmp_path / f"{name}.c").write_text(text)
        subprocess.run(["gcc", "-O2", "-ffunction-sections", "-c", "-o", tmp_path / f"{name}.o",
                        tmp_path / f"{name}.c"], check=True)
        paths.append(str(tmp_path / f"{name}.o"))
    names = subprocess.run(["nm", paths[1]], capture_output=True, text=True, check=True).stdout
    assert " f.cold" in names
    everything = diff_objects(*paths, DiffOptions(objname="prog"))
    assert sorted(c.name for c in everything.changed_functions) == ["f", "h"]
    left_out = diff_objects(*paths, DiffOptions(objname="prog", leave_out=frozenset({"f"})))
    assert [c.name for c in left_out.changed_functions] == ["h"]
    assert not [i for i in left_out.included if i.symbol.startswith("f")]
