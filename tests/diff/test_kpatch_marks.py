"""kpatch's marks (templates/kernel/include/kpatch-macros.h) through the differ: KPATCH_IGNORE_FUNCTION and
KPATCH_IGNORE_SECTION keep changes out of the patch (the same pair without the marks is refused), the marks
do not reach the output, and the livepatch callback tables come with the callbacks they name."""
from __future__ import annotations

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from patch_build.diffobj.diff import DiffOptions, diff_objects
from support import elfcheck, toolchain
from support.diffcases import OBJNAME


def test_ignored_function_and_section_are_left_out_with_a_warning(fixtures):
    fx = fixtures["kernel_kpatch_ignore"]
    result = fx.diff.result
    assert [c.name for c in result.changed_functions] == ["kfunc"]
    assert any("function kwarn" in w and "KPATCH_IGNORE" in w for w in result.warnings), result.warnings
    assert any("section .data.kpatch_test_meta" in w for w in result.warnings), result.warnings
    assert not [n for n in elfcheck.section_names(fx.diff.out) if n.startswith(".kpatch.ignore")]


def test_without_the_marks_the_same_change_is_refused(fixtures, tmp_path):
    """What the marks do: without them kwarn is replaced and warn_line's new initial value refused."""
    fx = fixtures["kernel_kpatch_ignore"]
    source = fx.source("patched").read_text()
    unmarked = "\n".join(line for line in source.splitlines() if ".kpatch.ignore." not in line)
    assert unmarked != source
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / fx.unit_name).write_text(unmarked)
    patched = toolchain.compile_object(fx.unit_name, tmp_path / "patched.o", fx.manifest["cflags"], tmp_path / "src")
    result = diff_objects(str(fx.orig), str(patched), DiffOptions(kernel=True, objname=OBJNAME))
    assert {c.name for c in result.changed_functions} == {"kfunc", "kwarn"}
    assert [e.symbol for e in result.errors] == ["warn_line"]


def test_callback_tables_point_at_the_callbacks_in_the_output(fixtures):
    fx = fixtures["kernel_kpatch_callbacks"]
    assert fx.diff.returncode == 0, fx.diff.stderr
    with open(fx.diff.out, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for table, callback in ((".kpatch.callbacks.pre_patch", "cb_pre_patch"),
                                (".kpatch.callbacks.post_unpatch", "cb_post_unpatch")):
            assert elf.get_section_by_name(table).data_size == 16
            rela = next(s for s in elf.iter_sections() if isinstance(s, RelocationSection)
                        and elf.get_section(s["sh_info"]).name == table)
            targets = {r["r_offset"]: symtab.get_symbol(r["r_info_sym"]) for r in rela.iter_relocations()}
            assert set(targets) == {0, 8}, table
            fn = targets[0]
            named = fn.name or elf.get_section(fn["st_shndx"]).name
            assert callback in named, (table, named)
            assert fn["st_shndx"] != "SHN_UNDEF", f"{callback} must be carried by the patch, not looked up"


def test_callbacks_are_refused_in_user_space(fixtures):
    run = fixtures["kpatch_callbacks_user"].diff
    assert run.returncode == 1
    assert "kernel livepatch module" in run.stderr


MALFORMED_MARKS = r"""
int kfunc(int x) { return x + VALUE; }
asm(".pushsection .kpatch.ignore.functions,\"aw\"\n.quad elsewhere\n.quad 0\n.popsection");
"""


def test_malformed_ignore_marks_are_named_not_a_crash(tmp_path):
    """Entries that point outside the unit or at nothing: refused with the section's name."""
    objects = []
    for stem, value in (("orig", 1), ("patched", 2)):
        src = tmp_path / stem / "unit.c"
        src.parent.mkdir()
        src.write_text(MALFORMED_MARKS.replace("VALUE", str(value)))
        objects.append(toolchain.compile_object("unit.c", tmp_path / f"{stem}.o", ["-O2"], src.parent))
    result = diff_objects(*map(str, objects), DiffOptions(kernel=True, objname=OBJNAME))
    reasons = sorted(e.reason for e in result.errors if e.symbol == ".kpatch.ignore.functions")
    assert reasons == ["entry at offset 0 points at nothing in this unit",
                       "entry at offset 8 points at nothing in this unit"], result.errors
