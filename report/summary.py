"""The one-line machine-readable summary `patch-build --json` prints on stdout (for CI)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.report.build import report_path
from patch_build.report.identity import sha256_file
from patch_build.report.model import STATUS_EXIT, Report, read_report
from patch_build.report.render import FORMATS, SUFFIXES

_ZERO_COUNTS = {"changed": 0, "new": 0, "unexplained": 0, "left_out": 0, "included": 0, "rejected": 0, "warnings": 0}


def status_for_exit(code: int) -> str:
    """The report status that goes with a command's exit code (anything unknown is a failure)."""
    return next((status for status, c in STATUS_EXIT.items() if c == code), "failed")


def json_summary(status: str, *, name: str | None = None, module: str | os.PathLike | None = None,
                 reports: list[str | os.PathLike] = (), report: Report | None = None,
                 message: str | None = None) -> str:
    """One JSON line (no trailing newline): status, exit_code, name, module, sha256, reports by format,
    counts and message. Works for failed builds too, with whatever exists (often nothing)."""
    if status not in STATUS_EXIT:
        raise ValueError(f"unknown status {status!r}")
    module_path = Path(module) if module is not None and Path(module).is_file() else None
    by_format = {}
    for path in reports:
        path = str(path)
        by_format[path.rsplit(".", 1)[-1]] = path
    summary = {
        "status": status,
        "exit_code": STATUS_EXIT[status],
        "name": name or (report.name if report else None),
        "module": str(module_path) if module_path else None,
        "sha256": sha256_file(module_path) if module_path else None,
        "reports": by_format,
        "counts": report.counts() if report else dict(_ZERO_COUNTS),
        "message": message,
    }
    return json.dumps(summary, separators=(",", ":"))


def build_summary(exit_code: int, *, outdir: str | os.PathLike, name: str | None = None,
                  since: float | None = None, module: str | os.PathLike | None = None,
                  message: str | None = None) -> str:
    """The summary of a finished `patch-build` from what it left in OUTDIR: the reports NAME.report.*
    (a build writes them for every outcome but bad input, exit 2) and the counts read from the JSON one.
    Without `name` (a build that failed before saying it), NAME is that of the one JSON report written in
    OUTDIR at or after `since` (a time.time() taken before the build), so stale reports are never named."""
    status = status_for_exit(exit_code)
    if name is None and since is not None and status != "failed":
        suffix = SUFFIXES["json"]
        fresh = [p for p in Path(outdir).glob("*" + suffix) if p.stat().st_mtime >= since]
        if len(fresh) == 1:
            name = fresh[0].name[:-len(suffix)]
    reports, report = [], None
    if name is not None and status != "failed":
        reports = [p for p in (report_path(outdir, name, fmt) for fmt in FORMATS) if p.is_file()]
        json_path = report_path(outdir, name, "json")
        if json_path.is_file():
            try:
                report = read_report(json_path)
            except InputError:  # not the report model: the summary still names the files
                report = None
    return json_summary(status, name=name, module=module if status == "built" else None, reports=reports,
                        report=report, message=message)
