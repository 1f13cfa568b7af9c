"""The reports of a user-space or kernel build (NAME.report.json, .md, .html) through report/'s data model
(issue 6).

The one place that shapes those builds' reports (the Go builder shapes its own: its units are packages, diffed
by the Go toolchain's listings, not objects). `tool_identity`/`compiler_identity` serve every builder.
"""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from patch_build.report.build import write_reports
from patch_build.report.collect import build_report, object_report
from patch_build.report.model import ReportWarning, Target


def tool_identity() -> dict:
    try:
        version = metadata.version("patch-build")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": "patch-build", "version": version, "python": platform.python_version()}


@lru_cache(maxsize=None)
def compiler_identity(compiler: str) -> dict:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return {"path": compiler, "version": out.splitlines()[0] if out else "unknown"}


def build_file_warning(path: str) -> str:
    return (f"the patch changes the build file {path}: its code runs during patch-build, as the user running it "
            "(--no-build-changes refuses such patches)")


def write_build_report(outdir: Path, name: str, status: str, message: str, units: list, targets: list,
                       patches: list[Path], module: Path | None, tree: Path, build_files: list[str],
                       generated: list[str] = ()) -> list[Path]:
    """Write the reports; `units` are kbuild.units.UnitDiff (their objects must still exist), `targets` have
    name and build_id, `build_files` are the build-system files the patches change (a warning each),
    `generated` the files the patched build wrote that no patch touches. Returns the paths written, JSON first."""
    objects = [object_report(u.report, source=u.source, patches=patches, relative_to=tree,
                             object_name=u.object_name, generated=generated, left_out=u.left_out,
                             rejected=[(m.split(" ", 1)[0], f"the deployed {u.objname} runs other code: {m}")
                                       for m in u.mismatched])
               for u in units]
    report = build_report(name, "user", objects, status=status, message=message, patches=patches,
                          targets=[Target(name=t.name, build_id=t.build_id) for t in targets], module=module,
                          relative_to=tree, warnings=[ReportWarning("build-files", path, build_file_warning(path))
                                                      for path in build_files])
    return write_reports(report, outdir, name)


def write_kernel_report(outdir: Path, name: str, status: str, message: str, units: list, patches: list[Path],
                        tree: Path, release: str, details: dict[str, str], module: Path | None) -> list[Path]:
    """Write the reports of a kernel build, also when it is refused; `units` are kbuild.kernel_units.Unit (those
    not diffed yet are left out), `details` what the report says of the module (release, atomic replace, ...).
    Returns the paths written, JSON first."""
    objects = [object_report(u.diff, source=u.source, patches=patches, relative_to=tree, object_name=u.obj,
                             left_out=u.left_out) for u in units if u.diff is not None]
    targets = sorted({u.target for u in units if u.target})
    report = build_report(name, "kernel", objects, status=status, message=message, patches=patches,
                          targets=[Target(name=t, kernel_release=release) for t in targets], module=module,
                          relative_to=tree, details=details)
    return write_reports(report, outdir, name)
