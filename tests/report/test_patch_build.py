"""`patch-build --json` end to end on fixtures/build/cprog: one summary line on stdout, the three reports
beside the module, and two builds of the same inputs give byte-identical modules and JSON reports."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "build"


@pytest.fixture(scope="module")
def cprog(tmp_path_factory) -> Path:
    """The program's tree, built: its `prog` plays the deployed binary."""
    src = tmp_path_factory.mktemp("cprog") / "src"
    shutil.copytree(FIXTURES / "cprog", src)
    subprocess.run(["make", "-s"], cwd=src, check=True, capture_output=True)
    return src


def patch_build(src: Path, patch: str, outdir: Path):
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    run = subprocess.run(["patch-build", "--json", str(FIXTURES / patch), "-s", str(src), "-t", "prog",
                          "-n", "fix", "-o", str(outdir)], capture_output=True, text=True, env=env)
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout + run.stderr  # stdout is the summary line only
    return run, json.loads(lines[0])


def test_two_builds_give_identical_module_and_json_report(cprog, tmp_path):
    results = [patch_build(cprog, "cprog-fix.patch", tmp_path / out) for out in ("out1", "out2")]
    for run, summary in results:
        assert run.returncode == 0, run.stderr
        assert summary["status"] == "built" and summary["exit_code"] == 0 and summary["name"] == "fix"
        module = Path(summary["module"])
        assert summary["sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()
        assert sorted(summary["reports"]) == ["html", "json", "md"]
        assert all(Path(p).is_file() and Path(p).parent == module.parent for p in summary["reports"].values())
        assert summary["counts"]["changed"] >= 3 and summary["counts"]["new"] == 1
        assert "patch-build" in run.stderr  # the human output went to stderr
    (_, first), (_, second) = results
    module1, module2 = Path(first["module"]).read_bytes(), Path(second["module"]).read_bytes()
    json1, json2 = (Path(s["reports"]["json"]).read_bytes() for s in (first, second))
    assert module1 == module2
    assert json1 == json2
    for blob in (module1, json1):
        assert b"/tmp/" not in blob and str(tmp_path).encode() not in blob and str(cprog).encode() not in blob
    report = json.loads(json1)
    assert report["module"]["sha256"] == first["sha256"] and report["source_date_epoch"] == 1700000000
    assert report["patches"] == [{"name": "cprog-fix.patch",
                                  "sha256": hashlib.sha256((FIXTURES / "cprog-fix.patch").read_bytes()).hexdigest()}]
    changed = {f["name"] for o in report["objects"] for f in o["functions"] if f["status"] == "changed"}
    assert {"compute", "greeting", "count_calls"} <= changed
    # scaled() changed through util.h's SCALE macro, which no hunk of its own touches: util.h's hunk explains it
    explained = {f["name"]: f["explained_by"] for o in report["objects"] for f in o["functions"]}
    (util_h,) = [h for h in report["hunks"] if h["file"] == "util.h"]
    assert explained["scaled"] == [{"hunk": util_h["id"], "how": "uses changed SCALE"}]
    assert not [w for o in report["objects"] for w in o["warnings"] if w["kind"] == "unexplained"]


def test_refused_build_still_writes_its_reports(cprog, tmp_path):
    run, summary = patch_build(cprog, "cprog-limit.patch", tmp_path / "out")
    assert run.returncode == 1 and summary["status"] == "refused" and summary["module"] is None
    assert "limit" in summary["message"] and summary["counts"]["rejected"] >= 1
    report = json.loads(Path(summary["reports"]["json"]).read_text())
    assert report["status"] == "refused"
    assert any(p["symbol"].endswith("limit") for o in report["objects"] for p in o["rejected"])


def test_failed_build_summary(cprog, tmp_path):
    run, summary = patch_build(cprog, "cprog-broken.patch", tmp_path / "out")
    assert run.returncode == 2 and summary["status"] == "failed" and summary["exit_code"] == 2
    assert summary["reports"] == {} and summary["module"] is None
    assert "undeclared_offset" in summary["message"]
