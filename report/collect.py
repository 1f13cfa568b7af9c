"""Build the report model from the differ's results and the build's facts.

`object_report` turns one diff (a `diffobj.diff.DiffResult` or the dict its `report()` gives, while the
two objects it compared still exist) into an `ObjectReport`: functions with reasons, what was included
and why, rejected changes, warnings (the differ's and the inline analysis'), the compiler that built the
unit, and a disassembly diff per changed or new function. `build_report` wraps object reports with the
tool, target, patch and module identities.
"""
from __future__ import annotations

import os
from pathlib import Path

from diffobj.linked import read_model
from report import identity
from report.demangle import demangle
from report.disasm import function_diff
from report.inline import analyse, changed_lines, read_inline_info
from report.model import (
    Compiler,
    Function,
    Included,
    ObjectReport,
    PatchFile,
    Problem,
    Report,
    ReportWarning,
    Target,
)


def display_path(path: str | os.PathLike, relative_to: str | os.PathLike | None) -> str:
    """A path fit for an artifact: relative to the build tree, else the basename, never a host path."""
    path = Path(path)
    if relative_to is not None:
        try:
            return path.resolve().relative_to(Path(relative_to).resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def hunks_of(patches) -> dict[str, set[int]]:
    hunks: dict[str, set[int]] = {}
    for patch in patches:
        for path, lines in changed_lines(Path(patch).read_text(errors="replace")).items():
            hunks.setdefault(path, set()).update(lines)
    return hunks


def object_report(diff, *, source: str | None = None, patches=(), rejected=(), relative_to=None,
                  disasm: bool = True) -> ObjectReport:
    """One compared unit. `patches` (the applied patch files) say which source lines changed, which makes
    the inline analysis exact; `rejected` adds (symbol, reason) refusals the build found beyond the
    differ's; paths are shown relative to `relative_to`."""
    d = diff.report() if hasattr(diff, "report") else diff
    changes = d["changed_functions"]
    orig_obj = read_model(d["orig"])
    new_obj = read_model(d["patched"])
    sizes = {s.name: s.size for s in new_obj.functions()}

    extra_reasons, inline_warnings = analyse(read_inline_info(d["patched"]), [c["name"] for c in changes],
                                             hunks_of(patches) if patches else None, d["objname"])
    functions = [Function(name=c["name"], status="changed", reasons=[*c["reasons"], *extra_reasons.get(c["name"], [])],
                          old_name=c["old_name"], sympos=c["sympos"], old_size=c["old_size"],
                          new_size=c["new_size"]) for c in changes]
    functions += [Function(name=n, status="new", reasons=["new"], new_size=sizes.get(n)) for n in d["new_functions"]]
    listed = {f.name for f in functions}
    included = [Included(symbol=i["symbol"], kind=i["kind"], reason=i["reason"]) for i in d["included"]]
    functions += [Function(name=i.symbol, status="included", reasons=[i.reason], new_size=sizes.get(i.symbol))
                  for i in included if i.kind == "function" and i.symbol not in listed]

    readable = demangle(f.name for f in functions)
    for f in functions:
        f.demangled = readable.get(f.name)

    diffs = []
    if disasm:
        for f in functions:
            if f.status == "changed":
                fd = function_diff(orig_obj, f.old_name or f.name, new_obj, f.name)
            elif f.status == "new":
                fd = function_diff(None, None, new_obj, f.name)
            else:
                continue
            if fd is not None:
                diffs.append(fd)
    return ObjectReport(
        objname=d["objname"],
        source=source,
        original=display_path(d["orig"], relative_to),
        patched=display_path(d["patched"], relative_to),
        compiler=identity.compiler_of(d["patched"]),
        functions=functions,
        included=included,
        rejected=[Problem(symbol=e["symbol"], reason=e["reason"]) for e in d["errors"]]
        + [Problem(symbol=s, reason=r) for s, r in rejected],
        warnings=[ReportWarning("differ", None, str(w)) for w in d["warnings"]] + inline_warnings,
        diffs=diffs,
    )


def status_of(objects: list[ObjectReport]) -> str:
    if any(o.rejected for o in objects):
        return "refused"
    if not any(o.functions or o.included for o in objects):
        return "no-change"
    return "built"


def build_report(name: str, kind: str, objects: list[ObjectReport], *, status: str | None = None,
                 message: str | None = None, patches=(), targets: list[Target] = (),
                 module: str | os.PathLike | None = None, relative_to=None, details: dict[str, str] | None = None,
                 warnings: list[ReportWarning] = (), env=None) -> Report:
    """The whole report of a build. `status` defaults to what the objects say (refused, no-change,
    built); `module` is the written module file (hashed); `patches` the applied patch files (hashed);
    `details` other facts worth showing (e.g. {"replace": "yes"}); `warnings` those about the whole build;
    `env` supplies SOURCE_DATE_EPOCH
    (default: os.environ)."""
    compilers: list[Compiler] = []
    for o in objects:
        if o.compiler is not None and o.compiler not in compilers:
            compilers.append(o.compiler)
    return Report(
        name=name,
        kind=kind,
        status=status or status_of(objects),
        message=message,
        tool=identity.tool(),
        compilers=compilers,
        targets=list(targets),
        patches=[PatchFile(name=display_path(p, relative_to), sha256=identity.sha256_file(p)) for p in patches],
        module=identity.artifact(module) if module is not None else None,
        objects=list(objects),
        details=dict(details or {}),
        warnings=list(warnings),
        source_date_epoch=identity.source_date_epoch(env),
    )


def diff_report(result, name: str | None = None) -> Report:
    """The report of one `patch-diff` run (kind "diff"): what `patch-diff --report` writes."""
    obj = object_report(result)
    return build_report(name or Path(result.patched_path).stem, "diff", [obj])
