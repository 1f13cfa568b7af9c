"""ORC unwind data of livepatch modules, as a module built normally has it: every function of the `.ko` (the
hook's and the patched ones) starts under an ORC entry, and a patched function's entries are those objtool
made for it in its unit, where it made them there.

A module unit (binfmt_misc.c, a module of one object) has objtool's tables from its compile on both lines; a
vmlinux unit has them on 6.1 only (6.12, with IBT, runs objtool on vmlinux.o, and on each module's linked
object). At the livepatch module's link on 6.12, objtool made no table the differ's output already had (the
module unit's), so the hook had no ORC (nor call or return sites)."""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from support import elfcheck, orc

pytestmark = [pytest.mark.kernel]


@pytest.mark.parametrize("patch", ["binfmt-status.patch", "vmlinux-and-module.patch"])
def test_every_function_has_its_orc_entries(patch_build, patch, tmp_path):
    built = patch_build(patch, tmp_path, "-d")
    assert built.ok, built.stderr
    scratch = Path(re.search(r"scratch tree kept: (\S+)", built.stderr).group(1))
    try:
        units = sorted((scratch / "patched").glob("*.o"))
        # objtool, where it runs at the module's link (6.12), found none of its tables already there
        assert "already has" not in (scratch / "module-build.log").read_text(), built.stderr
        module_orc = orc.orc_entries(built.module)
        assert orc.uncovered_functions(built.module) == []
        functions = orc.functions(built.module)
        assert {"patch_init", "free_patch"} <= {f.name for f in functions}  # the hook's are checked too

        # A patched function's entries are its unit's, at the same offsets, where the unit has ORC.
        compared = []
        for unit in units:
            unit_orc = orc.orc_entries(unit)
            unit_functions = {(f.section, f.name): f for f in orc.functions(unit)}
            for f in functions:
                mine = unit_functions.get((f.section, f.name))
                # the patched functions, each in its own section (-ffunction-sections); not the hook's, in .text
                if mine is None or not unit_orc or f.section != f".text.{f.name}":
                    continue
                assert orc.function_entries(module_orc, f) == orc.function_entries(unit_orc, mine), f.name
                compared.append(f.name)
        assert "bm_status_read" in compared  # binfmt_misc.o, a module of one object, has ORC on both lines

        # objtool ran once over each function: one CALL_PADDING symbol each (6.12), not one per run.
        places = Counter((s.name, s.ndx, s.value) for s in elfcheck.readelf_symbols(built.module) if s.type == "FUNC")
        assert [p for p, n in places.items() if n > 1] == []
    finally:
        shutil.rmtree(scratch)
