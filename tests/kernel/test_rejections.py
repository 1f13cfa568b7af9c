"""Changes a livepatch cannot carry: patch-build refuses them (exit 1) with the reason, writes no module
(only the report saying why), and leaves the kernel tree as it was."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import fixture_patch

pytestmark = [pytest.mark.kernel]


CASES = [
    ("init-function.patch", "proc_cmdline_init: changed initialisation-only code (.init.text)"),
    ("data-init.patch", "sysctl_overcommit_ratio: initial value of existing data changed"),
    ("asm-file.patch", "arch/x86/lib/memmove_64.S: assembly source"),
    ("notrace.patch", "trace_clock_x86_tsc: has no fentry call"),
    # SYSCALL_DEFINE1's body, out of line and notrace (kpatch-syscall.h's KPATCH_SYSCALL_DEFINE1 builds it).
    ("syscall-notrace-body.patch", "__do_sys_newuname: has no fentry call"),
    ("kpatch-two-pre-patch.patch",
     ".kpatch.callbacks.pre_patch: 2 pre_patch callbacks for vmlinux (fs/proc/meminfo.c, fs/proc/version.c)"),
]


@pytest.mark.parametrize("patch,reason", CASES, ids=[c[0].removesuffix(".patch") for c in CASES])
def test_refused(kenv, patch_build, tmp_path, patch, reason):
    built = patch_build(patch, tmp_path)
    assert built.returncode == 1, built.stderr
    errors = [line for line in built.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and reason in errors[0], built.stderr
    assert "Traceback" not in built.stderr
    assert not list(tmp_path.glob("*.ko"))
    report = json.loads(built.module.with_suffix(".report.json").read_text())
    assert report["status"] == "refused" and reason.split(": ", 1)[1] in report["message"]
    # The patch was reverted: it still applies to the tree.
    dry = subprocess.run(["patch", "-p1", "--dry-run", "--forward", "--batch", "-d", str(kenv.source), "-i",
                          str(fixture_patch(kenv, patch))], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout


def test_compile_error_is_bad_input_and_tree_is_restored(kenv, patch_build, tmp_path):
    built = patch_build("compile-error.patch", tmp_path)
    assert built.returncode == 2, built.stderr
    errors = [line for line in built.stderr.splitlines() if "error:" in line and line.startswith("patch-build")]
    # gcc quotes with ' or with ‘’, after the locale make passes on (6.12's kbuild unexports LC_ALL).
    assert len(errors) == 1 and re.search(r"[‘']oops[’'] undeclared", errors[0]), built.stderr
    assert not list(tmp_path.glob("*.ko"))
    dry = subprocess.run(["patch", "-p1", "--dry-run", "--forward", "--batch", "-d", str(kenv.source), "-i",
                          str(fixture_patch(kenv, "compile-error.patch"))], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout
