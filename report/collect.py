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

from patch_build.diffobj.include import Included
from patch_build.diffobj.linked import read_model
from patch_build.diffobj.problems import Problem
from patch_build.report import identity
from patch_build.report.demangle import demangle
from patch_build.report.disasm import function_diff
from patch_build.report.explain import UnitSources, explain_object
from patch_build.report.inline import analyse
from patch_build.report.model import (
    Compiler,
    Function,
    FunctionRef,
    ObjectReport,
    PatchFile,
    PatchHunk,
    Report,
    ReportWarning,
    Target,
)
from patch_build.report.patches import lines_by_file, read_hunks
from patch_build.report.sourcemap import read_source_map


def display_path(path: str | os.PathLike, relative_to: str | os.PathLike | None) -> str:
    """A path fit for an artifact: relative to the build tree, else the basename, never a host path."""
    path = Path(path)
    if relative_to is not None:
        try:
            return path.resolve().relative_to(Path(relative_to).resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def object_report(diff, *, source: str | None = None, patches=(), rejected=(), relative_to=None,
                  disasm: bool = True, object_name: str | None = None, generated=(),
                  left_out=()) -> ObjectReport:
    """One compared unit. `patches` (the applied patch files) say which source lines changed: each changed
    or new function is then explained by its hunks, or flagged with a likely cause (`generated`: files the
    build wrote that no patch touches, relative to `relative_to`), and the inline analysis is exact;
    `rejected` adds (symbol, reason) refusals the build found beyond the differ's; `left_out` are the
    differ's change entries of the unexplained functions the build kept out of the module. Paths are shown
    relative to `relative_to`; a build names the unit's object by `object_name`, never a scratch copy."""
    d = diff.report() if hasattr(diff, "report") else diff
    changes = d["changed_functions"]
    orig_obj = read_model(d["orig"])
    new_obj = read_model(d["patched"])
    sizes = {s.name: s.size for s in new_obj.functions()}
    hunks = read_hunks(patches) if patches else []
    patched_map = read_source_map(d["patched"])

    extra_reasons, warnings = analyse(patched_map, [c["name"] for c in changes],
                                      lines_by_file(hunks) if patches else None, d["objname"])
    functions = [Function(name=c["name"], status="changed", reasons=[*c["reasons"], *extra_reasons.get(c["name"], [])],
                          old_name=c["old_name"], sympos=c["sympos"], old_size=c["old_size"],
                          new_size=c["new_size"]) for c in changes]
    functions += [Function(name=c["name"], status="changed", reasons=list(c["reasons"]), old_name=c["old_name"],
                           sympos=c["sympos"], old_size=c["old_size"], new_size=c["new_size"], left_out=True)
                  for c in left_out]
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
    if patches:
        unit = UnitSources(hunks, Path(relative_to) if relative_to is not None else None, source, tuple(generated))
        explained = explain_object(d["orig"], d["patched"],
                                   [(f.name, f.old_name if f.status == "changed" else None)
                                    for f in functions if f.status != "included"],
                                   unit, patched=patched_map, diffs={fd.name: fd for fd in diffs})
        for f in functions:
            if f.name in explained:
                f.explained_by, f.unexplained = explained[f.name]
                if f.unexplained is not None:
                    left = "; left out of the module (--only-explained)" if f.left_out else ""
                    warnings.append(ReportWarning(
                        "unexplained", f.name, f"{f.name} changed but no hunk of the patches explains it{left}. "
                                               f"Likely cause: {f.unexplained}"))
    return ObjectReport(
        objname=d["objname"],
        source=source,
        original=object_name or display_path(d["orig"], relative_to),
        patched=object_name or display_path(d["patched"], relative_to),
        compiler=identity.compiler_of(d["patched"]),
        functions=functions,
        included=included,
        rejected=[Problem(symbol=e["symbol"], reason=e["reason"]) for e in d["errors"]]
        + [Problem(symbol=s, reason=r) for s, r in rejected],
        warnings=[ReportWarning("differ", None, str(w)) for w in d["warnings"]] + warnings,
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
    hunks = [PatchHunk(id=i, patch=h.patch, file=h.path, header=h.header, lines=h.text)
             for i, h in enumerate(read_hunks(patches) if patches else [], 1)]
    for oi, o in enumerate(objects, 1):
        for f in o.functions:
            for e in f.explained_by:
                if 0 < e.hunk <= len(hunks):
                    hunks[e.hunk - 1].functions.append(FunctionRef(object=oi, symbol=f.name))
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
        hunks=hunks,
        source_date_epoch=identity.source_date_epoch(env),
    )


def diff_report(result, name: str | None = None) -> Report:
    """The report of one `patch-diff` run (kind "diff"): what `patch-diff --report` writes."""
    obj = object_report(result)
    return build_report(name or Path(result.patched_path).stem, "diff", [obj])
