"""A unit with thousands of functions (and so thousands of sections), one of them changed."""
from __future__ import annotations

import pytest

from support import elfcheck, generate, toolchain
from support.diffcases import OBJNAME, assert_valid_object, names_of

COUNT, CHANGED = 3000, 1234


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("many")
    (tmp / "orig.c").write_text(generate.many_functions(COUNT))
    (tmp / "patched.c").write_text(generate.many_functions(COUNT, changed=CHANGED))
    # -O0: the point is the number of sections, and gcc -O2 takes several times longer on 3000 functions
    orig, patched = toolchain.compile_objects([(tmp / "orig.c", tmp / "orig.o", ["-O0"]),
                                              (tmp / "patched.c", tmp / "patched.o", ["-O0"])])
    return tmp, orig, patched


def test_one_changed_function_among_thousands(big_pair):
    from patch_build.diffobj.diff import DiffOptions, diff_objects

    tmp, orig, patched = big_pair
    assert len(elfcheck.defined_functions(orig)) == COUNT
    assert len(elfcheck.section_names(orig)) > 2 * COUNT
    result = diff_objects(str(orig), str(patched), DiffOptions(objname=OBJNAME))
    assert not result.errors
    assert names_of(result.report()["changed_functions"]) == {f"f{CHANGED}"}
    assert result.new_functions == []
    out = tmp / "out.o"
    result.write(str(out))
    assert_valid_object(out, tmp)
    assert elfcheck.defined_functions(out) == {f"f{CHANGED}"}
    assert {"sink", "shared_total"} <= elfcheck.undefined_names(out)
    entries = elfcheck.kpatch_funcs(out)
    assert [(e.name, e.objname) for e in entries] == [(f"f{CHANGED}", OBJNAME)]
