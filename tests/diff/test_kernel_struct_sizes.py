"""Kernel special-section tables whose entries are C structs of a size that changes between kernels (struct
alt_instr: 12 bytes in 6.1, 14 in 6.12): patch-diff takes the sizes from --struct-size or kpatch-build's
environment variables, never a built-in guess, and a short last .parainstructions entry is valid.

The unit below writes both tables as the kernel's macros do (6.12's alt_instr layout; paravirt sites aligned
before each entry, so the last one lacks its tail padding), for an unchanged function first and the changed
one last.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from support import elfcheck, toolchain
from support.diffcases import assert_one_line_error, patch_diff_command

SOURCE = r"""
#define SITES(name) asm volatile(                                                      \
	"661: nop\n662:\n"                                                             \
	".pushsection .altinstructions,\"a\"\n"                                        \
	".long 661b - .\n.long 663f - .\n.4byte 0x1234\n.byte 662b-661b\n.byte 664f-663f\n" \
	".popsection\n"                                                                \
	".pushsection .altinstr_replacement,\"ax\"\n663: " name "\n664:\n.popsection\n"  \
	"771: nop\n772:\n"                                                             \
	".pushsection .parainstructions,\"a\"\n.balign 8\n.quad 771b\n.byte 3\n.byte 772b-771b\n.popsection")
int shared_state;

int kother(int x)
{
	SITES("pause");
	return x - shared_state;
}

int kfunc(int x)
{
	SITES("lfence");
	return x * RESULT + shared_state;
}
"""
CFLAGS = ["-O2", "-pg", "-mfentry", "-mrecord-mcount", "-mcmodel=kernel", "-fno-PIE", "-fno-asynchronous-unwind-tables"]
KPATCH_6_12 = {"ALT_STRUCT_SIZE": "14", "PARA_STRUCT_SIZE": "16"}
SIZE_VARIABLES = ("ALT_STRUCT_SIZE", "BUG_STRUCT_SIZE", "EX_STRUCT_SIZE", "JUMP_STRUCT_SIZE", "PARA_STRUCT_SIZE",
                  "ORC_STRUCT_SIZE", "STATIC_CALL_STRUCT_SIZE", "PRINTK_INDEX_STRUCT_SIZE")


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    work = tmp_path_factory.mktemp("struct-sizes")
    built = []
    for stem, result in (("orig", 3), ("patched", 5)):
        (work / stem).mkdir()
        (work / stem / "unit.c").write_text(SOURCE.replace("RESULT", str(result)))
        built.append(toolchain.compile_object("unit.c", work / f"{stem}.o", CFLAGS, work / stem))
    assert dict(elfcheck.section_headers(built[1]))[".parainstructions"] == 16 + 10  # the short last entry
    return built


def _diff(objects, out, *options, env=None):
    clean = {k: v for k, v in os.environ.items() if k not in SIZE_VARIABLES}
    return subprocess.run([*patch_diff_command(), *map(str, objects), "-o", str(out), "--kernel", *options],
                          capture_output=True, text=True, env=dict(clean, **(env or {})))


def test_without_sizes_is_bad_input_naming_the_setting(objects, tmp_path):
    proc = _diff(objects, tmp_path / "out.o")
    assert proc.returncode == 2
    err = assert_one_line_error(proc)
    assert "entry size unknown" in err and "struct alt_instr" in err and "ALT_STRUCT_SIZE" in err, err
    assert not (tmp_path / "out.o").exists()


def test_kpatch_environment_variables(objects, tmp_path):
    out = tmp_path / "out.o"
    proc = _diff(objects, out, env=KPATCH_6_12)
    assert proc.returncode == 0, proc.stderr
    sizes = dict(elfcheck.section_headers(out))
    # kfunc's entries only: one 14-byte alt_instr, its 3-byte lfence, its paravirt site padded to 16 bytes.
    assert (sizes[".altinstructions"], sizes[".altinstr_replacement"], sizes[".parainstructions"]) == (14, 3, 16)


def test_options_win_over_the_environment(objects, tmp_path):
    out = tmp_path / "out.o"
    proc = _diff(objects, out, "--struct-size", "alt_instr=14", "--struct-size", "PARA_STRUCT_SIZE=16",
                 env={"ALT_STRUCT_SIZE": "12"})
    assert proc.returncode == 0, proc.stderr
    # 6.1's alt_instr size on 6.12's table: 28 bytes are not whole 12-byte entries.
    proc = _diff(objects, out, "--struct-size", "alt_instr=12", env=KPATCH_6_12)
    assert proc.returncode == 1
    assert "not a multiple of its 12-byte entries (struct alt_instr)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("option,env,message", [
    (["--struct-size", "alt_instr=twelve"], {}, "'twelve' is not a size in bytes"),
    (["--struct-size", "alt_instr"], {}, "expected STRUCT=BYTES"),
    (["--struct-size", "altinstr=12"], {}, "unknown struct 'altinstr'"),
    ([], {"JUMP_STRUCT_SIZE": "0"}, "environment variable JUMP_STRUCT_SIZE: '0' is not a size in bytes"),
])
def test_bad_sizes_are_one_line_errors(objects, tmp_path, option, env, message):
    proc = _diff(objects, tmp_path / "out.o", *option, env=env)
    assert proc.returncode == 2
    assert message in assert_one_line_error(proc)
