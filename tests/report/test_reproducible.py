"""Reproducible artifacts: the same inputs built in two different directories give byte-identical differ
outputs and JSON reports, with no build path inside, and the report carries SOURCE_DATE_EPOCH only."""
from __future__ import annotations

from patch_build.report.build import write_reports

from reportenv import build_pair, diff_and_report


def test_two_builds_give_identical_outputs_and_reports(tmp_path):
    artifacts = []
    for run in ("first", "second-build-elsewhere"):
        work = tmp_path / run
        built = build_pair(work, "fix.patch")
        result, report = diff_and_report(built, env={"SOURCE_DATE_EPOCH": "1700000000"})
        out = work / "out"
        out.mkdir()
        result.write(str(out / "server.o"))
        (json_report,) = write_reports(report, out, "fix", formats=("json",))
        artifacts.append(((out / "server.o").read_bytes(), json_report.read_bytes(), work))
    (obj1, json1, work1), (obj2, json2, work2) = artifacts
    assert obj1 == obj2
    assert json1 == json2
    for blob in (obj1, json1):
        assert str(tmp_path).encode() not in blob and b"/tmp/" not in blob
    assert b'"source_date_epoch": 1700000000' in json1
