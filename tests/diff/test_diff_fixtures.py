"""Every fixture pair of fixtures/diff through the differ: exit code, exact changed/new sets, and a valid
output that holds what the patch needs and nothing it can take from the running original.

The differ runs in-process through its API (diffobj.diff, exit code mapped as patch-diff maps it);
test_diff_cli.py runs the real `patch-diff` on a representative set and checks it agrees."""
from __future__ import annotations

import pytest

from support import elfcheck
from support.diffcases import (
    FIXTURES,
    OBJNAME,
    assert_valid_object,
    expand,
    fixture_names,
    load_manifest,
    matching,
    names_of,
)

ALL = fixture_names()
ACCEPTED = [n for n in ALL if load_manifest(n)["exit"] == 0]
REFUSED = [n for n in ALL if load_manifest(n)["exit"] == 1]
NO_CHANGE = [n for n in ALL if load_manifest(n)["exit"] == 3]


def test_enough_fixtures():
    """At least 30 pairs, C and C++, at -O0, -O2 and -O3, with and without -fPIC."""
    assert len(ALL) >= 30
    flags = [set(load_manifest(n)["cflags"]) for n in ALL]
    assert all(any(level in f for f in flags) for level in ("-O0", "-O2", "-O3"))
    assert any("-fPIC" in f for f in flags) and any("-fPIC" not in f for f in flags)
    suffixes = {(FIXTURES / n / "orig.c").exists() for n in ALL}
    assert suffixes == {True, False}, "C and C++ fixtures"


@pytest.mark.parametrize("name", ALL)
def test_compiler_made_what_the_fixture_is_about(fixtures, name):
    """Clones, sections, groups and symbol names the fixture relies on exist (or are absent) in both objects."""
    fx = fixtures[name]
    m = fx.manifest
    orig_syms = {s.name for s in elfcheck.readelf_symbols(fx.orig)}
    patched_syms = {s.name for s in elfcheck.readelf_symbols(fx.patched)}
    for clone in m.get("clones", []):
        assert clone in orig_syms and clone in patched_syms, f"gcc did not emit {clone}"
    for gone in m.get("absent", []):
        assert gone not in orig_syms | patched_syms, f"{gone} was expected to be inlined away"
    for sec in m.get("sections", []):
        assert sec in elfcheck.section_names(fx.orig) and sec in elfcheck.section_names(fx.patched), sec
    for group in m.get("groups", []):
        assert group in elfcheck.comdat_groups(fx.orig) and group in elfcheck.comdat_groups(fx.patched), group
    assert set(m.get("symbols_orig", [])) <= orig_syms
    assert set(m.get("symbols_patched", [])) <= patched_syms
    assert fx.orig.read_bytes() != fx.patched.read_bytes(), "the two objects are identical: nothing to test"


@pytest.mark.parametrize("name", ALL)
def test_exit_code(fixtures, name):
    fx = fixtures[name]
    run = fx.diff
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.returncode == fx.manifest["exit"], f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"


@pytest.mark.parametrize("name", ACCEPTED)
def test_changed_and_new_functions(fixtures, name):
    fx = fixtures[name]
    report = fx.diff.report
    assert report is not None, f"no report written; stderr:\n{fx.diff.stderr}"
    assert names_of(report["changed_functions"]) == set(fx.manifest["changed"])
    assert names_of(report["new_functions"]) == set(fx.manifest["new"])
    assert report["errors"] == []


@pytest.mark.parametrize("name", ACCEPTED)
def test_report_says_why_each_symbol_is_included(fixtures, name):
    """`included` lists exactly what OUT.o defines (functions, data, sections), each with a reason."""
    fx = fixtures[name]
    assert fx.diff.returncode == 0, fx.diff.stderr
    included = fx.diff.report["included"]
    for entry in included:
        assert entry["reason"], entry
        assert entry["kind"] in ("function", "object", "section"), entry
    syms = [s for s in elfcheck.readelf_symbols(fx.diff.out) if s.defined and s.type in ("FUNC", "OBJECT", "TLS")]
    by_kind = {k: {e["symbol"] for e in included if e["kind"] == k} for k in ("function", "object", "section")}
    funcs = [s for s in syms if s.type == "FUNC"]
    listed_at = {(s.ndx, s.value) for s in funcs if s.name in by_kind["function"]}
    aliases = {s.name for s in funcs if s.name not in by_kind["function"] and (s.ndx, s.value) in listed_at
               and s.name.endswith(".localalias")}  # gcc's -fPIC alias of a listed function, same code
    # The kernel's __pfx_NAME padding (CALL_PADDING) comes with NAME, its part.
    prefixes = {s.name for s in funcs if s.name.startswith("__pfx_") and s.name[6:] in by_kind["function"]}
    assert {s.name for s in funcs} - aliases - prefixes == by_kind["function"]
    assert {s.name for s in syms if s.type != "FUNC"} == by_kind["object"]
    assert by_kind["section"] <= set(elfcheck.section_names(fx.diff.out))


@pytest.mark.parametrize("name", ACCEPTED)
def test_output_is_a_valid_object(fixtures, name):
    fx = fixtures[name]
    assert fx.diff.returncode == 0, fx.diff.stderr
    assert_valid_object(fx.diff.out, fx.workdir)


@pytest.mark.parametrize("name", ACCEPTED)
def test_output_holds_no_unchanged_function(fixtures, name):
    """Only changed and new functions (and .cold pieces of changed ones) are defined in OUT.o."""
    fx = fixtures[name]
    assert fx.diff.returncode == 0, fx.diff.stderr
    wanted = set(fx.manifest["changed"]) | set(fx.manifest["new"])
    defined = elfcheck.defined_functions(fx.diff.out)
    extra = {f for f in defined if f not in wanted and not any(
        f.startswith(w + ".cold") or f in (w + ".localalias", "__pfx_" + w) for w in wanted)}
    assert not extra, f"OUT.o defines functions that did not change: {sorted(extra)}"
    assert wanted <= defined, f"OUT.o lacks {sorted(wanted - defined)}"
    unchanged = elfcheck.defined_functions(fx.patched) - wanted
    for f in unchanged:
        if not any(f.startswith(w + ".") or f == "__pfx_" + w for w in wanted):
            assert f not in defined, f"unchanged {f} copied into OUT.o"


@pytest.mark.parametrize("name", ACCEPTED)
def test_references_and_data(fixtures, name):
    """References to the original are undefined symbols named by the contract; new data is defined."""
    fx = fixtures[name]
    assert fx.diff.returncode == 0, fx.diff.stderr
    undefined = elfcheck.undefined_names(fx.diff.out)
    defined = elfcheck.defined_names(fx.diff.out)
    for pattern in fx.manifest.get("references", []):
        assert matching(pattern, undefined), f"no undefined {expand(pattern)} in {sorted(undefined)}"
    for pattern in fx.manifest.get("included", []):
        assert matching(pattern, defined), f"{expand(pattern)} not defined in OUT.o ({sorted(defined)})"
    types = {s.name: s.type for s in elfcheck.readelf_symbols(fx.diff.out) if not s.defined}
    for ref, typ in fx.manifest.get("reference_types", {}).items():
        assert types.get(expand(ref)) == typ, f"undefined {expand(ref)} is {types.get(expand(ref))}, not {typ}"
    for pattern in fx.manifest.get("not_defined", []):
        assert not matching(pattern, defined), f"OUT.o defines a copy of {matching(pattern, defined)}"
    # every local reference names this object and a position, with the prefix of its mode
    prefix, other = (".klp.sym.", ".kpatch.sym.") if fx.kernel else (".kpatch.sym.", ".klp.sym.")
    for name_ in undefined:
        if name_.startswith(prefix):
            assert name_.startswith(f"{prefix}{OBJNAME}."), name_
            assert name_.rpartition(",")[2].isdigit(), name_
        assert not name_.startswith(other), f"{other} name in {'kernel' if fx.kernel else 'user-space'} output"
    sizes = dict(elfcheck.section_headers(fx.diff.out))
    for sec, size in fx.manifest.get("out_sections", {}).items():
        assert sizes.get(sec) == size, f"{sec}: {sizes.get(sec)} bytes in OUT.o, expected {size}"
    for pattern in fx.manifest.get("out_sections_present", []):
        assert matching(pattern, sizes), f"OUT.o has no section {pattern} ({sorted(sizes)})"


@pytest.mark.parametrize("name", ACCEPTED)
def test_kpatch_funcs(fixtures, name):
    """One 56-byte entry per changed function: new code, old size, name and objname strings."""
    fx = fixtures[name]
    assert fx.diff.returncode == 0, fx.diff.stderr
    entries = elfcheck.kpatch_funcs(fx.diff.out)
    assert sorted(e.name for e in entries) == sorted(fx.manifest["changed"])
    orig_funcs = {s.name: s for s in elfcheck.readelf_symbols(fx.orig) if s.type == "FUNC" and s.defined}
    out_funcs = {s.name: s for s in elfcheck.readelf_symbols(fx.diff.out) if s.type == "FUNC" and s.defined}
    for e in entries:
        assert e.objname == OBJNAME
        assert e.old_addr == 0, "user space resolves old_addr at load time"
        assert e.sympos == 0, f"{e.name} is unique in its object"
        assert e.name in orig_funcs, f"{e.name} is not a function of the original object"
        assert e.old_size == orig_funcs[e.name].size, f"{e.name}: old_size {e.old_size}"
        assert e.new_symbol == e.name, f"{e.name}: new_addr points at {e.new_symbol}"
        assert e.new_size == out_funcs[e.name].size > 0


@pytest.mark.parametrize("name", REFUSED)
def test_refused_change_names_the_symbol(fixtures, name):
    fx = fixtures[name]
    run = fx.diff
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines, "a refusal must say why"
    symbol = fx.manifest["reject"]
    assert any(symbol in ln for ln in lines), f"no error line names {symbol}:\n{run.stderr}"
    assert not run.out.exists(), "a refused diff must not write OUT.o"
    if run.report is not None:
        assert any(symbol in e["symbol"] for e in run.report["errors"]), run.report["errors"]


@pytest.mark.parametrize("name", NO_CHANGE)
def test_no_functional_change_writes_nothing(fixtures, name):
    fx = fixtures[name]
    assert fx.diff.returncode == 3, fx.diff.stderr
    assert "Traceback" not in fx.diff.stderr
    assert not fx.diff.out.exists()


@pytest.mark.parametrize("name", ACCEPTED)
def test_function_changes_describe_the_original(fixtures, name):
    """FunctionChange records name the function in the original and the target, with both sizes."""
    fx = fixtures[name]
    result = fx.diff.result
    orig_funcs = {s.name: s for s in elfcheck.readelf_symbols(fx.orig) if s.type == "FUNC" and s.defined}
    for c in result.changed_functions:
        assert c.objname == OBJNAME
        assert c.old_name in orig_funcs, c
        assert c.old_size == orig_funcs[c.old_name].size
        assert c.new_size > 0 and c.reasons, c
