"""`patch-report` re-renders a saved report; bad input is one line on stderr and exit 2."""
from __future__ import annotations

import json
import subprocess

import pytest

from patch_build.report.build import write_reports
from patch_build.report.summary import json_summary


def patch_report(*args):
    return subprocess.run(["patch-report", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def written(fix_report, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    return write_reports(fix_report, out, "fix")


def test_write_reports_writes_three_renderings(written):
    assert [p.name for p in written] == ["fix.report.json", "fix.report.md", "fix.report.html"]
    assert not list(written[0].parent.glob("*.tmp"))


def test_rerendering_gives_the_written_bytes(written, tmp_path):
    json_path, md_path, html_path = written
    for fmt, original in (("json", json_path), ("md", md_path), ("html", html_path)):
        run = patch_report(json_path, "--format", fmt)
        assert run.returncode == 0, run.stderr
        assert run.stdout == original.read_text()
    run = patch_report(json_path, "--format", "html", "-o", tmp_path / "again.html")
    assert run.returncode == 0 and run.stdout == ""
    assert (tmp_path / "again.html").read_text() == html_path.read_text()


def test_markdown_lists_functions_warnings_and_diffs(written):
    md = written[1].read_text()
    assert "| `alpha` | CHANGED | code changed; changed inlined callee scale |" in md
    assert "| `audit` | NEW | new |" in md
    assert "**inlined-into-many** `scale`" in md
    assert "### Disassembly: `greet`" in md
    assert "| build command | gcc -c server.c |" in md
    assert '-      5  lea rdi, [rip + "hello, %s\\n"]' in md
    assert '+      5  lea rdi, [rip + "hello there, %s\\n"]' in md


@pytest.mark.parametrize("content, expected", [
    (None, "No such file"),
    ("{not json", "not JSON"),
    ('{"name": "x"}', "not a patch-build report"),
    ('{"schema": 99}', "schema 99 is not supported"),
    ('{"schema": 1, "name": "x"}', "missing field"),
    ('{"schema": 1, "name": "x", "kind": "user", "status": "built", "tool": {"name": 3, "version": "1"}}',
     "tool.name: expected str"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, expected):
    path = tmp_path / "bad.report.json"
    if content is not None:
        path.write_text(content)
    run = patch_report(path, "--format", "md")
    assert run.returncode == 2
    assert run.stderr.startswith("patch-report: ") and expected in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_unknown_format_is_bad_usage(written):
    run = patch_report(written[0], "--format", "pdf")
    assert run.returncode == 2 and "unknown format 'pdf'" in run.stderr


def test_json_summary_is_one_line_with_module_hash_and_reports(fix_report, written, tmp_path):
    module = tmp_path / "fix.kpatch"
    module.write_bytes(b"\x7fELF module bytes")
    line = json_summary("built", module=module, reports=written, report=fix_report)
    assert "\n" not in line
    summary = json.loads(line)
    import hashlib
    assert summary == {
        "status": "built", "exit_code": 0, "name": "fix", "module": str(module),
        "sha256": hashlib.sha256(b"\x7fELF module bytes").hexdigest(),
        "reports": {"json": str(written[0]), "md": str(written[1]), "html": str(written[2])},
        "counts": fix_report.counts(), "message": None}
    failed = json.loads(json_summary("refused", name="fix", message="limit: initial value changed"))
    assert failed["exit_code"] == 1 and failed["module"] is None and failed["counts"]["changed"] == 0
