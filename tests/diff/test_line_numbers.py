"""A change of the line number a function passes to a line-taking call (`__might_sleep`, `__assert_fail`) is
no change; the same change passed to any other function is one. Real gcc objects, the whole differ."""
from __future__ import annotations

import pytest

from diffobj.diff import DiffOptions, diff_objects
from support import toolchain

SOURCE = """extern void CALLEE(const char *file, int line);
int f(int x) { CALLEE("f.c", LINE); return x * 3 + 1; }
int g(int x) { return x - 1; }
"""


def _changed(tmp_path, callee: str) -> list[str]:
    jobs = []
    for stem, line in (("orig", 10), ("patched", 14)):
        src = tmp_path / f"{stem}.c"
        src.write_text(SOURCE.replace("CALLEE", callee).replace("LINE", str(line)))
        jobs.append((src, tmp_path / f"{stem}.o", ["-O2", "-ffunction-sections", "-fdata-sections"]))
    orig, patched = toolchain.compile_objects(jobs)
    result = diff_objects(str(orig), str(patched), DiffOptions())
    return [c.name for c in result.changed_functions]


@pytest.mark.parametrize("callee", ["__might_sleep", "__assert_fail_line"])
def test_line_number_change(tmp_path, callee):
    expected = [] if callee == "__might_sleep" else ["f"]
    assert _changed(tmp_path, callee) == expected
