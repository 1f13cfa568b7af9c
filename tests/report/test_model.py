"""The report model built from real diffs of data/server.c before and after real patches."""
from __future__ import annotations

import json

from patch_build.report.model import Report
from patch_build.report.patches import lines_by_file, read_hunks
from patch_build.report.render import to_json

from reportenv import CFLAGS, build_pair, diff_and_report


def _functions(report):
    return {f.name: f for o in report.objects for f in o.functions}


def _rows(report, name):
    diff = next(d for o in report.objects for d in o.diffs if d.name == name)
    return diff.rows


def test_functions_reasons_and_identities(fix_report):
    r = fix_report
    assert r.status == "built" and r.kind == "user" and r.exit_code == 0
    funcs = _functions(r)
    assert {n: f.status for n, f in funcs.items()} == {
        "alpha": "changed", "beta": "changed", "delta": "changed", "epsilon": "changed",
        "greet": "changed", "compute": "changed", "ratio": "changed", "audit": "new"}
    assert "same" not in funcs
    assert any("string literal" in why and "hello there" in why for why in funcs["greet"].reasons)
    assert "changed inlined callee scale" in funcs["alpha"].reasons
    assert not any("inlined" in why for why in funcs["compute"].reasons)
    assert funcs["compute"].new_size > funcs["compute"].old_size
    included = {i.symbol: i.reason for i in r.objects[0].included}
    assert "compute" in included["audit"]  # needed by the function that calls it
    assert r.counts() == {"changed": 7, "new": 1, "unexplained": 0, "left_out": 0,
                          "included": len(r.objects[0].included), "rejected": 0, "warnings": 5}
    (compiler,) = r.compilers
    assert compiler.version.startswith("GCC: ") and "-ffunction-sections" in compiler.flags
    assert r.objects[0].compiler == compiler and r.objects[0].source == "server.c"
    assert [p.name for p in r.patches] == ["fix.patch"] and len(r.patches[0].sha256) == 64
    assert (r.objects[0].original, r.objects[0].patched) == ("server.o", "server.o")


def test_inline_warnings_name_the_callee_and_its_callers(fix_report):
    warnings = fix_report.objects[0].warnings
    only = sorted(w.symbol for w in warnings if w.kind == "inlined-callee-only")
    assert only == ["alpha", "beta", "delta", "epsilon"]  # not greet or compute: their own source changed
    (many,) = [w for w in warnings if w.kind == "inlined-into-many"]
    assert many.symbol == "scale" and "4 functions" in many.message and "epsilon" in many.message
    assert not [w for w in warnings if w.kind == "unexplained"]  # every change comes from a hunk


def test_each_function_is_mapped_to_the_hunks_that_explain_it(fix_report):
    explained = {f.name: [(e.hunk, e.how) for e in f.explained_by] for o in fix_report.objects for f in o.functions
                 if f.status != "included"}
    # hunk 1: #define RATIO; hunk 2: the inline helper scale(); hunk 3: greet, audit (new) and compute
    assert explained["ratio"] == [(1, "uses changed RATIO")]  # ratio()'s own lines are untouched
    assert all(explained[f] == [(2, "inlined callee scale")] for f in ("alpha", "beta", "delta", "epsilon"))
    assert explained["greet"] == [(3, "added own line(s) 43; removed own line(s) 43")]
    assert explained["compute"] == [(3, "added own line(s) 56; removed own line(s) 49")]
    assert explained["audit"] == [(3, "added own line(s) 46, 47, 48, 49, 50")]
    assert all(f.unexplained is None for o in fix_report.objects for f in o.functions)
    hunks = {h.id: sorted(ref.symbol for ref in h.functions) for h in fix_report.hunks}
    assert hunks == {1: ["ratio"], 2: ["alpha", "beta", "delta", "epsilon"], 3: ["audit", "compute", "greet"]}
    assert fix_report.hunks[0].file == "server.c" and fix_report.hunks[0].lines[3] == "-#define RATIO 4"


def test_disassembly_diff_names_relocation_targets(fix_report):
    greet = _rows(fix_report, "greet")
    (changed,) = [row for row in greet if row.tag != "equal"]
    assert '"hello, %s\\n"' in changed.old_text and '"hello there, %s\\n"' in changed.new_text
    assert any(row.tag == "equal" and row.new_text == "jmp printf" for row in greet)
    compute = _rows(fix_report, "compute")
    assert any(row.new_text and "audit" in row.new_text for row in compute if row.tag != "equal")
    assert any("[rip + limit]" in (row.new_text or "") for row in compute)
    assert any("[rip + counter]" in (row.new_text or "") for row in compute)
    audit = _rows(fix_report, "audit")
    assert all(row.tag == "insert" and row.old_text is None for row in audit)
    assert any(row.new_text == "call puts" for row in audit)
    alpha = _rows(fix_report, "alpha")
    assert [row.tag for row in alpha if row.tag != "equal"]  # x * 3 became x * 5 in the inlined copy


def test_json_round_trip_is_exact(fix_report):
    text = to_json(fix_report)
    again = Report.from_dict(json.loads(text))
    assert again == fix_report
    assert to_json(again) == text


def test_refused_change_is_reported_with_its_reason(tmp_path):
    _, report = diff_and_report(build_pair(tmp_path, "refuse.patch"), name="refuse")
    assert report.status == "refused" and report.exit_code == 1
    (problem,) = report.objects[0].rejected
    assert problem.symbol == "limit" and "initial value" in problem.reason


def test_without_patches_the_inline_callee_is_inferred(fix_build):
    _, report = diff_and_report(fix_build, patches=False)
    funcs = _functions(report)
    assert "changed inlined callee scale (likely)" in funcs["alpha"].reasons
    kinds = [w.kind for w in report.objects[0].warnings]
    assert "inlined-callee-only" not in kinds  # cannot tell without knowing which lines the patch touched
    assert "inlined-into-many" in kinds


def test_without_dwarf_the_report_says_so(tmp_path):
    built = build_pair(tmp_path, "fix.patch", cflags=[f for f in CFLAGS if f != "-g"])
    _, report = diff_and_report(built)
    (warning,) = report.objects[0].warnings
    assert warning.kind == "no-debug-info" and "-g" in warning.message
    assert report.compilers[0].flags == []  # flags come from DW_AT_producer


def test_changed_lines_of_a_unified_diff(tmp_path):
    # the second hunk removes a line that reads "-- l": only the hunk's line counts tell it from a header
    patch = tmp_path / "x.patch"
    patch.write_text("--- a/src/x.c\n+++ b/src/x.c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
                     "@@ -10,2 +10,1 @@\n k\n--- l\n--- a/old.h\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n")
    hunks = read_hunks([patch])
    assert lines_by_file(hunks) == {"src/x.c": {2, 11}, "old.h": {0}}
    assert [(h.path, h.added, h.removed) for h in hunks] == [("src/x.c", {2}, {2}), ("src/x.c", set(), {11}),
                                                             ("old.h", set(), {1})]


def test_cplusplus_functions_are_shown_demangled(tmp_path):
    import subprocess

    from patch_build.diffobj.diff import diff_objects
    from patch_build.report.collect import diff_report

    source = "struct Meter {{ int n; int bump(int by); }};\nint Meter::bump(int by) {{ n += by * {}; return n; }}\n"
    for side, k in (("orig", 2), ("patched", 3)):
        (tmp_path / f"{side}.cpp").write_text(source.format(k))
        subprocess.run(["g++", "-O2", "-ffunction-sections", "-fdata-sections", "-c", f"{side}.cpp"],
                       cwd=tmp_path, check=True)
    report = diff_report(diff_objects(str(tmp_path / "orig.o"), str(tmp_path / "patched.o")))
    (func,) = report.objects[0].functions
    assert (func.name, func.demangled) == ("_ZN5Meter4bumpEi", "Meter::bump(int)")
    assert report.kind == "diff" and report.objects[0].display_name(func.name) == "Meter::bump(int)"


def test_user_target_is_named_by_basename_and_gnu_build_id(tmp_path):
    import re
    import subprocess

    from patch_build.report.identity import user_target

    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-Wl,--build-id=sha1", "main.c", "-o", "server"], cwd=tmp_path, check=True)
    notes = subprocess.run(["readelf", "-n", str(tmp_path / "server")], capture_output=True, text=True).stdout
    expected = re.search(r"Build ID: ([0-9a-f]+)", notes).group(1)
    target = user_target(tmp_path / "server")
    assert (target.name, target.build_id, target.kernel_release) == ("server", expected, None)


def test_a_change_from_date_and_time_is_flagged_with_its_cause(tmp_path):
    """gcc's __DATE__/__TIME__ follow SOURCE_DATE_EPOCH: two builds a day and a half apart differ in stamp(),
    which no hunk touches; the patch changes level() only."""
    import os
    import subprocess

    from patch_build.diffobj.diff import diff_objects
    from patch_build.report.collect import build_report, object_report

    source = ("const char *stamp(void)\n{\n\treturn __DATE__ \" \" __TIME__;\n}\n\n\n\n\n\n"
              "int level(void)\n{\n\treturn %d;\n}\n")
    patch = tmp_path / "level.patch"
    patch.write_text("--- a/stamp.c\n+++ b/stamp.c\n@@ -10,4 +10,4 @@\n int level(void)\n {\n-\treturn 1;\n"
                     "+\treturn 2;\n }\n")
    for side, level, epoch in (("orig", 1, "1700000000"), ("patched", 2, "1700130000")):
        (tmp_path / side).mkdir()
        (tmp_path / side / "stamp.c").write_text(source % level)
        subprocess.run(["gcc", *CFLAGS, f"-ffile-prefix-map={tmp_path / side}=.", "-c", "stamp.c"],
                       cwd=tmp_path / side, check=True, env=dict(os.environ, SOURCE_DATE_EPOCH=epoch))
    result = diff_objects(str(tmp_path / "orig" / "stamp.o"), str(tmp_path / "patched" / "stamp.o"))
    obj = object_report(result, source="stamp.c", patches=[patch], relative_to=tmp_path / "patched")
    funcs = {f.name: f for f in obj.functions}
    assert [(e.hunk, e.how) for e in funcs["level"].explained_by] == \
        [(1, "added own line(s) 12; removed own line(s) 12")]
    assert funcs["stamp"].explained_by == []
    assert "a date (`__DATE__`)" in funcs["stamp"].unexplained and "`__TIME__`" in funcs["stamp"].unexplained
    (warning,) = [w for w in obj.warnings if w.kind == "unexplained"]
    assert warning.symbol == "stamp" and "__DATE__" in warning.message
    report = build_report("level", "user", [obj], patches=[patch], env={})
    assert [[r.symbol for r in h.functions] for h in report.hunks] == [["level"]]
    assert report.counts()["unexplained"] == 1


def test_a_broken_patch_is_bad_input_naming_the_file(tmp_path):
    import pytest

    from patch_build.common.errors import InputError
    from patch_build.report.patches import touched_files

    cut = tmp_path / "cut.patch"
    cut.write_text("--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n a\n")  # the hunk says 3 lines, has 1
    prose = tmp_path / "notes.patch"
    prose.write_text("just some words\n")
    for patch, why in ((cut, "Hunk is shorter than expected"), (prose, "it names no file")):
        with pytest.raises(InputError) as err:
            touched_files(patch)
        assert str(err.value) == f"{patch.name} is not a patch: {why}"
        assert err.value.exit_code == 2


def test_a_changed_type_explains_the_functions_that_use_it(tmp_path):
    """A field added to a struct moves the next ones: get_b() and level() change though no hunk lands in them.
    conf.h's first hunk starts inside `struct conf` (diff -p names it in the header), the second changes a
    typedef'd struct whose name only its closing line gives."""
    import subprocess

    from patch_build.diffobj.diff import diff_objects
    from patch_build.report.collect import object_report

    header = ("struct conf {\n\tint a;\n\tint x1;\n\tint x2;\n\tint x3;\n\tint x4;\n%s\tint b;\n};\n\n\n\n\n\n\n"
              "typedef struct {\n%s\tint level;\n} knob_t;\n")
    unit = ('#include "conf.h"\n\nint get_b(const struct conf *c)\n{\n\treturn c->b;\n}\n\n'
            "int level(const knob_t *k)\n{\n\treturn k->level;\n}\n\nint other(int v)\n{\n\treturn v + 1;\n}\n")
    patch = tmp_path / "conf.patch"
    patch.write_text("--- a/conf.h\n+++ b/conf.h\n@@ -4,4 +4,5 @@ struct conf {\n \tint x2;\n \tint x3;\n \tint x4;\n"
                     "+\tint pad;\n \tint b;\n"
                     "@@ -15,3 +16,4 @@\n typedef struct {\n+\tint gain;\n \tint level;\n } knob_t;\n")
    for side, extra in (("orig", ("", "")), ("patched", ("\tint pad;\n", "\tint gain;\n"))):
        (tmp_path / side).mkdir()
        (tmp_path / side / "conf.h").write_text(header % extra)
        (tmp_path / side / "use.c").write_text(unit)
        subprocess.run(["gcc", *CFLAGS, f"-ffile-prefix-map={tmp_path / side}=.", "-c", "use.c"],
                       cwd=tmp_path / side, check=True)
    subprocess.run(["patch", "-s", "-p1", "--dry-run", "-i", str(patch)], cwd=tmp_path / "orig", check=True)
    result = diff_objects(str(tmp_path / "orig" / "use.o"), str(tmp_path / "patched" / "use.o"))
    obj = object_report(result, source="use.c", patches=[patch], relative_to=tmp_path / "patched")
    explained = {f.name: [(e.hunk, e.how) for e in f.explained_by] for f in obj.functions}
    assert explained == {"get_b": [(1, "uses changed conf")], "level": [(2, "uses changed knob_t")]}
    assert not [w for w in obj.warnings if w.kind == "unexplained"]


def test_a_comment_after_an_inline_helper_explains_none_of_its_callers(tmp_path):
    """The last function of a header has no next declaration to end its extent: a comment below it is not
    the helper's code. stamp() inlines twice() and prints __TIME__ (SOURCE_DATE_EPOCH differs): it changed
    for the time, not for the comment."""
    import os
    import subprocess

    from patch_build.diffobj.diff import diff_objects
    from patch_build.report.collect import build_report, object_report

    header = "static inline int twice(int x)\n{\n\treturn x * 2;\n}\n\n\n\n\n/* %s */\n"
    unit = ('#include <stdio.h>\n#include "twice.h"\n\nint stamp(int v)\n{\n\tputs(__TIME__);\n'
            "\treturn twice(v);\n}\n")
    patch = tmp_path / "comment.patch"
    patch.write_text("--- a/twice.h\n+++ b/twice.h\n@@ -6,4 +6,4 @@\n \n \n \n"
                     "-/* helpers */\n+/* small helpers */\n")
    for side, words, epoch in (("orig", "helpers", "1700000000"), ("patched", "small helpers", "1700000100")):
        (tmp_path / side).mkdir()
        (tmp_path / side / "twice.h").write_text(header % words)
        (tmp_path / side / "stamp.c").write_text(unit)
        subprocess.run(["gcc", *CFLAGS, f"-ffile-prefix-map={tmp_path / side}=.", "-c", "stamp.c"],
                       cwd=tmp_path / side, check=True, env=dict(os.environ, SOURCE_DATE_EPOCH=epoch))
    result = diff_objects(str(tmp_path / "orig" / "stamp.o"), str(tmp_path / "patched" / "stamp.o"))
    obj = object_report(result, source="stamp.c", patches=[patch], relative_to=tmp_path / "patched")
    (stamp,) = obj.functions
    assert stamp.explained_by == [] and "`__TIME__`" in stamp.unexplained
    report = build_report("comment", "user", [obj], patches=[patch], env={})
    assert [h.functions for h in report.hunks] == [[]]
