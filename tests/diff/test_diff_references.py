"""What the differ's output references. Same inputs, same bytes: the output does not depend on PYTHONHASHSEED;
every relocation it writes is checked against what it is meant to reference (a mismatch is an internal error,
exit 4); a new global of another unit of the patch keeps its plain name."""
from __future__ import annotations

import pytest

from patch_build.common.errors import InternalError
from patch_build.diffobj.diff import DiffOptions, diff_objects
from patch_build.diffobj.output import ReferenceNamer, check_references
from support import elfcheck
from support.diffcases import OBJNAME
from support.hashseeds import patch_diff_outputs

# User space (C, C++, PIC, static locals, jump tables) and kernel mode (klp references, __mcount_loc).
CASES = ["static_local_renumbered", "switch_table_pic", "cpp_exceptions",
         "kernel_fentry_change"]


@pytest.mark.parametrize("name", CASES)
def test_output_is_the_same_whatever_the_hash_seed(fixtures, name, tmp_path):
    fx = fixtures[name]
    options = ["--objname", OBJNAME] + (["--kernel"] if fx.kernel else [])
    outputs = patch_diff_outputs(fx.orig, fx.patched, tmp_path, *options)
    assert len(set(outputs.values())) == 1, {seed: len(b) for seed, b in outputs.items()}
    assert next(iter(outputs.values())) == fx.diff.out.read_bytes()


def _checked(name: str, fixtures):
    """A fresh diff of NAME (the test corrupts its output) and what check_references needs."""
    fx = fixtures[name]
    result = diff_objects(str(fx.orig), str(fx.patched), DiffOptions(kernel=fx.kernel, objname=OBJNAME))
    copied = [s for s in result.patched.sections if s.included]  # build_output copies them first, in order
    out_of = dict(zip(copied, result.output.sections))
    assert [s.name for s in out_of] == [o.name for o in out_of.values()]
    return result, out_of, ReferenceNamer(fx.kernel, OBJNAME)


def test_wrong_reference_to_the_running_original_is_an_internal_error(fixtures):
    result, out_of, namer = _checked("kernel_fentry_change", fixtures)
    check_references(result.patched, out_of, namer)  # as written: passes
    rel = next(r for out in out_of.values() for r in out.relocations if r.symbol.name.startswith(".klp.sym."))
    rel.addend += 8
    with pytest.raises(InternalError) as info:
        check_references(result.patched, out_of, namer)
    assert info.value.exit_code == 4 and ".klp.sym." in str(info.value)


def test_wrong_reference_into_the_patch_is_an_internal_error(fixtures):
    result, out_of, namer = _checked("new_static_helper", fixtures)
    check_references(result.patched, out_of, namer)
    rel = next(r for out in out_of.values() for r in out.relocations if r.symbol.section is not None)
    other = next(o for o in out_of.values() if o is not rel.symbol.section)
    rel.symbol = other.section_symbol
    with pytest.raises(InternalError) as info:
        check_references(result.patched, out_of, namer)
    assert info.value.exit_code == 4


def test_new_global_of_another_unit_keeps_its_plain_name(fixtures, tmp_path):
    # Kernel mode names an unexported extern `.klp.sym.vmlinux.NAME,0` (a symbol of the running kernel), unless
    # another unit of the patch defines it anew: then the module links it in under its plain name.
    fx = fixtures["kernel_printk_constant"]
    for provided, expected in ((set(), ".klp.sym.vmlinux._printk,0"), ({"_printk"}, "_printk")):
        result = diff_objects(str(fx.orig), str(fx.patched),
                              DiffOptions(kernel=True, objname="vmlinux", exported=set(), provided=provided))
        out = tmp_path / f"out-{len(provided)}.o"
        result.write(str(out))
        assert {n for n in elfcheck.undefined_names(out) if "_printk" in n} == {expected}
