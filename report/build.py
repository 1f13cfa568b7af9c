"""Write a build's reports beside its module: NAME.report.json, NAME.report.md, NAME.report.html."""
from __future__ import annotations

import os
from pathlib import Path

from patch_build.report.model import Report
from patch_build.report.render import FORMATS, SUFFIXES, render


def report_path(outdir: str | os.PathLike, name: str, fmt: str) -> Path:
    return Path(outdir) / f"{name}{SUFFIXES[fmt]}"


def write_reports(report: Report, outdir: str | os.PathLike, name: str | None = None,
                  formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Render `report` in each format into `outdir`; returns the paths written, in `formats` order.
    Each file is written to a temporary name and renamed, so a failed build never leaves half a report."""
    name = name or report.name
    Path(outdir).mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = report_path(outdir, name, fmt)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render(report, fmt), encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written
