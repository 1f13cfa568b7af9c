"""Moved `__LINE__` values are no change (diffobj/line_numbers.py): a unit built before and after a patch that
adds lines above its functions (real gcc, the patch made by `diff -u`), diffed with and without the patch's line
shifts. A function of our own receiving `__LINE__` needs the patch to tell; a known reporting function with a
line parameter and a "file:line" string do not; a changed constant stays a change."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from patch_build.diffobj.diff import DiffOptions, diff_objects
from patch_build.report.patches import line_shifts
from support.toolchain import compile_object

CFLAGS = ["-O2", "-g", "-fno-asynchronous-unwind-tables"]

UNIT = """\
#define str(x) #x
#define stringify(x) str(x)
struct btrfs_trans_handle;
void report_line(const char *file, unsigned int line, int value);
void __btrfs_abort_transaction(struct btrfs_trans_handle *trans, const char *function, unsigned int line,
                               int error, int first_hit);
int _printk(const char *fmt, ...);
void report_where(const char *where);
{top}
int ours(int v)
{{
	if (v < 0)
		report_line(__FILE__, __LINE__, v);
	return v * {factor};
}}

void known(struct btrfs_trans_handle *trans, int error)
{{
	if (error)
		__btrfs_abort_transaction(trans, __func__, __LINE__, error, 1);
}}

int printed(int v)
{{
	if (v > 9)
		_printk("%s:%d: %d\\n", __func__, __LINE__, v);
	return v;
}}

void where(void)
{{
	report_where("at " __FILE__ ":" stringify(__LINE__));
}}
"""
TOP = "/* Three lines added\n * above every\n * function. */"


def _build(tmp_path: Path, top: str, factor: int = 3) -> tuple[Path, Path, Path]:
    """orig.o, patched.o (one source name, as one tree built twice) and the -p1 patch between them."""
    for side, text in (("a", UNIT.format(top="", factor=3)), ("b", UNIT.format(top=top, factor=factor))):
        (tmp_path / side).mkdir(exist_ok=True)
        (tmp_path / side / "unit.c").write_text(text)
    patch = tmp_path / "fix.patch"
    diff = subprocess.run(["diff", "-u", "a/unit.c", "b/unit.c"], cwd=tmp_path, capture_output=True, text=True)
    assert diff.returncode == 1, diff.stderr
    patch.write_text(diff.stdout)
    objects = []
    for side, name in (("a", "orig.o"), ("b", "patched.o")):
        (tmp_path / "unit.c").write_text((tmp_path / side / "unit.c").read_text())
        objects.append(compile_object("unit.c", tmp_path / name, CFLAGS, cwd=tmp_path))
    return objects[0], objects[1], patch


def _changed(orig: Path, patched: Path, patch: Path | None) -> list[str]:
    shifts = line_shifts([patch]) if patch is not None else None
    result = diff_objects(str(orig), str(patched), DiffOptions(line_shifts=shifts))
    assert not result.errors, result.errors
    return sorted(c.name for c in result.changed_functions)


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("lines"), TOP)


def _text(obj: Path, function: str) -> bytes:
    with open(obj, "rb") as f:
        return ELFFile(f).get_section_by_name(f".text.{function}").data()


def _strings(obj: Path) -> bytes:
    with open(obj, "rb") as f:
        return b"".join(s.data() for s in ELFFile(f).iter_sections() if s.name.startswith(".rodata"))


def test_the_objects_differ_in_line_numbers(moved):
    orig, patched, _ = moved
    for function in ("ours", "known", "printed"):
        assert _text(orig, function) != _text(patched, function), function
    assert b"at unit.c:32" in _strings(orig) and b"at unit.c:34" in _strings(patched)
    result = diff_objects(str(orig), str(patched), DiffOptions())
    # Without the patch only what a list can tell is unchanged: our own function and printk's variadic line
    # are changes (a list cannot tell a line from another integer argument).
    assert sorted(c.name for c in result.changed_functions) == ["ours", "printed"], result.report()


def test_known_reporting_function_and_file_line_string_without_the_patch(moved):
    orig, patched, _ = moved
    changed = _changed(orig, patched, None)
    assert "known" not in changed and "where" not in changed


def test_moved_lines_from_the_patch_are_no_change(moved):
    orig, patched, patch = moved
    assert _changed(orig, patched, patch) == []


def test_a_changed_constant_is_a_change_with_the_patch(tmp_path):
    orig, patched, patch = _build(tmp_path, TOP, factor=5)
    assert _changed(orig, patched, patch) == ["ours"]


def test_patch_diff_takes_the_patch(moved, tmp_path):
    orig, patched, patch = moved
    from support.diffcases import patch_diff_command

    proc = subprocess.run([*patch_diff_command(), str(orig), str(patched), "-o", str(tmp_path / "out.o"),
                           "--patch", str(patch)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "no functional change" in proc.stderr


def test_patch_diff_names_a_bad_patch(moved, tmp_path):
    orig, patched, _ = moved
    from support.diffcases import assert_one_line_error, patch_diff_command

    bad = tmp_path / "notes.txt"
    bad.write_text("not a diff\n")
    proc = subprocess.run([*patch_diff_command(), str(orig), str(patched), "-o", str(tmp_path / "out.o"),
                           "--patch", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "notes.txt is not a patch" in assert_one_line_error(proc)
