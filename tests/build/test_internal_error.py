"""An internal error (a bug of ours) is not a refusal: exit 4, status `error` in the report, which is still written,
and in the --json summary, with the one line saying where to look.

A bug cannot be summoned on purpose, so each test breaks one function of ours in-process (monkeypatch) the way a
bug would: it returns what its callers do not expect, or raises. The builds around it are real.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from buildenv import FIXTURES, tiny_kernel_tree
from typer.testing import CliRunner

from patch_build.report.model import Report


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("PATCH_BUILD_DEBUG", raising=False)


def _assert_internal_error(result, report_path, kind: str, exception: str) -> dict:
    assert result.exit_code == 4, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(("patch-build: error: internal error", "patch-diff: error: internal error")), last
    assert exception in last and "PATCH_BUILD_DEBUG=1" in last and "Traceback" not in result.stderr
    report = json.loads(report_path.read_text())
    assert (report["status"], report["kind"]) == ("error", kind)
    assert exception in report["message"] and "PATCH_BUILD_DEBUG=1" in report["message"]
    assert Report.from_dict(report).exit_code == 4  # patch-report reads it back
    return report


def test_user_build(tmp_path, monkeypatch):
    from patch_build.kbuild import cli, userspace

    monkeypatch.setattr(userspace, "read_module", lambda path: None)  # the linked module's reader "returns" nothing
    result = CliRunner().invoke(cli.app, ["-s", str(FIXTURES / "cprog"), "-t", "prog", "-o", str(tmp_path / "out"),
                                          "--json", str(FIXTURES / "cprog-fix.patch")])
    _assert_internal_error(result, tmp_path / "out" / "cprog-fix.report.json", "user", "AttributeError")
    summary = json.loads(result.stdout)
    assert (summary["status"], summary["exit_code"], summary["name"]) == ("error", 4, "cprog-fix")
    assert summary["reports"]["json"] == str(tmp_path / "out" / "cprog-fix.report.json")
    assert "AttributeError" in summary["message"]


def test_kernel_build(tmp_path, monkeypatch):
    # The bug strikes before anything is compiled.
    from patch_build.kbuild import cli, kernel_symbols

    ksrc, headers, system_map = tiny_kernel_tree(tmp_path)
    (tmp_path / "fix.patch").write_text("--- a/kernel/fix.c\n+++ b/kernel/fix.c\n@@ -1 +1 @@\n"
                                        "-int fixed(void) { return 1; }\n+int fixed(void) { return 2; }\n")

    def broken(path):
        raise KeyError("vmlinux")

    monkeypatch.setattr(kernel_symbols, "read_system_map", broken)
    result = CliRunner().invoke(cli.app, ["-s", str(ksrc), "--headers", str(headers), "--system-map", str(system_map),
                                          "-o", str(tmp_path / "out"), "--json", str(tmp_path / "fix.patch")])
    _assert_internal_error(result, tmp_path / "out" / "livepatch_fix.report.json", "kernel", "KeyError")
    assert json.loads(result.stdout)["status"] == "error"
    assert (ksrc / "kernel" / "fix.c").read_text() == "int fixed(void) { return 1; }\n"


def test_patch_diff_report(tmp_path, monkeypatch):
    from patch_build.diffobj import cli, diff

    for name, value in (("orig", 1), ("patched", 2)):
        (tmp_path / f"{name}.c").write_text(f"int answer(int x) {{ return x * 7 + {value}; }}\n")
        subprocess.run(["gcc", "-O2", "-ffunction-sections", "-c", str(tmp_path / f"{name}.c"), "-o",
                        str(tmp_path / f"{name}.o")], check=True)

    def broken(*args):
        raise IndexError("list index out of range")

    monkeypatch.setattr(diff, "correlate", broken)
    result = CliRunner().invoke(cli.app, [str(tmp_path / "orig.o"), str(tmp_path / "patched.o"), "-o",
                                          str(tmp_path / "out.o"), "--report", str(tmp_path / "report.json")])
    report = _assert_internal_error(result, tmp_path / "report.json", "diff", "IndexError")
    assert report["name"] == "patched"
    assert not (tmp_path / "out.o").exists()
