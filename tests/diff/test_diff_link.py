"""Link OUT.o into the original program in place of the changed functions; the program's output must
become the patched one.

The original program (non-PIE, orig.o plus the fixture's driver unit) runs, calls sched_yield() at its
patch point, and goes on. With the LD_PRELOAD shim (tests/support/patchshim.c) the patch is applied at
that point: OUT.o, linked by the real GNU ld at 0x10000000 with every reference to the original defined
at its address in the program, is mapped, and each old function jumps to its new one. State gathered
before the patch point (static locals, globals) must carry on after it: the references really reach the
running program's data.
"""
from __future__ import annotations

import subprocess

import pytest

from patch_build.patchformat.names import reference_name
from patch_build.patchformat.sections import FIELDS, FUNCS, POINTERS
from support import elfcheck, patchlink, toolchain
from support.diffcases import OBJNAME, fixture_names

LINKED = fixture_names(with_key="link")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return patchlink.build_shim(tmp_path_factory.mktemp("shim"))


def test_enough_link_fixtures():
    assert len(LINKED) >= 6


@pytest.mark.parametrize("name", LINKED)
def test_original_program_output(fixtures, name):
    fx = fixtures[name]
    run = subprocess.run([str(fx.program)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout == fx.manifest["link"]["orig_output"]


def _patch_for(fx, program: patchlink.ProgramSymbols):
    """OUT.o for the program: the fixture's diff, or, when the program repeats local names, a diff given the
    positions of the original's locals in the program (as the build driver gives them)."""
    if not fx.manifest["link"].get("sympos"):
        assert fx.diff.returncode == 0, fx.diff.stderr
        return fx.diff.out
    from patch_build.diffobj.diff import DiffOptions, diff_objects

    unit = fx.unit_name
    result = diff_objects(str(fx.orig), str(fx.patched),
                          DiffOptions(objname=OBJNAME, sympos=lambda sym: program.sympos_in_file(sym.name, unit)))
    assert not result.errors, result.errors
    out = fx.workdir / "out-sympos.o"
    result.write(str(out))
    return out


@pytest.mark.parametrize("name", LINKED)
def test_patched_program_output(fixtures, name, shim):
    fx = fixtures[name]
    program = patchlink.ProgramSymbols(fx.program, OBJNAME)
    patch = patchlink.link_patch(_patch_for(fx, program), program, fx.workdir)
    funcs = patchlink.patch_funcs(patch.elf)
    assert sorted(f.name for f in funcs) == sorted(fx.manifest["changed"])
    pairs = patchlink.redirects(funcs, program)
    run = patchlink.run_with_patch(fx.program, shim, patch, pairs)
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.stdout == fx.manifest["link"]["patched_output"]


def test_shim_without_patch_leaves_the_program_alone(fixtures, shim):
    """Control: redirecting nothing (an empty patch) keeps the original output, so the shim adds nothing."""
    fx = fixtures["static_local_counter"]
    assert fx.diff.returncode == 0, fx.diff.stderr
    program = patchlink.ProgramSymbols(fx.program, OBJNAME)
    patch = patchlink.link_patch(fx.diff.out, program, fx.workdir)
    run = patchlink.run_with_patch(fx.program, shim, patch, [])
    assert run.returncode == 0, run.stderr
    assert run.stdout == fx.manifest["link"]["orig_output"]


# the contract's record in C: its fields in order, the pointers as pointers
C_RECORD = "".join(f"\t{'const void *' if f in POINTERS else 'unsigned long '}{f};\n" for f in FIELDS)
HANDWRITTEN_PATCH = r"""
#include <stdio.h>
extern int kp_counter; /* renamed to the original's static local by objcopy */
int next_ticket(void)
{
	kp_counter += 100;
	printf("ticket %d\n", kp_counter);
	return kp_counter;
}
struct kpatch_func {
""" + C_RECORD + r"""};
__attribute__((section(""" + f'"{FUNCS}"' + r"""), used)) static struct kpatch_func entry = {
	(void *)next_ticket, 1, 0, OLD_SIZE, 0, "next_ticket", "prog"
};
"""


def test_link_harness_with_a_handwritten_patch(fixtures, shim, tmp_path):
    """The harness itself, without the differ: a patch written by hand in the output format (undefined
    `.kpatch.sym` reference, `.kpatch.funcs` entry) is linked and applied, and uses the running state."""
    fx = fixtures["static_local_counter"]
    program = patchlink.ProgramSymbols(fx.program, OBJNAME)
    old_size = program.function("next_ticket", 0).size
    src = tmp_path / "handwritten.c"
    src.write_text(HANDWRITTEN_PATCH)
    obj = toolchain.compile_object(src, tmp_path / "handwritten.o", ["-O2", f"-DOLD_SIZE={old_size}"])
    subprocess.run(["objcopy", f"--redefine-sym=kp_counter={reference_name(False, OBJNAME, 'counter.0', 0)}",
                    str(obj)], check=True)
    patch = patchlink.link_patch(obj, program, tmp_path)
    funcs = patchlink.patch_funcs(patch.elf)
    assert [(f.name, f.objname) for f in funcs] == [("next_ticket", OBJNAME)]
    run = patchlink.run_with_patch(fx.program, shim, patch, patchlink.redirects(funcs, program))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ticket 1\nticket 2\nticket 102\nticket 202\n"


def test_positions_of_repeated_locals(fixtures):
    """In duplicate_statics the program holds two `show` and two `counter.0`: the patch names the original's
    by position (2 here: the unit's come second in the program), and the plain diff's position 0 is refused."""
    fx = fixtures["duplicate_statics"]
    program = patchlink.ProgramSymbols(fx.program, OBJNAME)
    out = _patch_for(fx, program)
    pos = program.sympos_in_file("counter.0", fx.unit_name)
    assert pos > 0
    assert f".kpatch.sym.{OBJNAME}.counter.0,{pos}" in patchlink.undefined_symbols(out)
    entries = {e.name: e for e in elfcheck.kpatch_funcs(out)}
    assert entries["show"].sympos == program.sympos_in_file("show", fx.unit_name) > 0
    assert entries["lib_next"].sympos == 0  # global
    with pytest.raises(patchlink.LinkError, match="must be unique"):
        patchlink.link_patch(fx.diff.out, program, fx.workdir)
