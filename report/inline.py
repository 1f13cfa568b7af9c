"""Which changed functions changed because of a callee inlined into them (DWARF, pyelftools).

The compiler copies an inline callee's body into each caller, so one edited `static inline` helper can
change a dozen functions whose own source nobody touched. A release engineer should see that: the patch
replaces all of them. The patched object's DWARF says which callees are inlined into which functions
(report.sourcemap); a function is *touched* when a hunk of the applied patches lands in its extent.
Without the patches (a bare `patch-diff`), a callee counts as changed when its out-of-line copy changed,
or, heuristically, when every function it is inlined into (at least two) changed.
"""
from __future__ import annotations

from patch_build.report.model import ReportWarning
from patch_build.report.sourcemap import SourceMap, base_name

INLINED_INTO_MANY = 3  # warn when a changed callee is inlined into at least this many functions


def analyse(info: SourceMap | None, changed: list[str], hunks: dict[str, set[int]] | None,
            objname: str) -> tuple[dict[str, list[str]], list[ReportWarning]]:
    """(extra reasons per changed function, warnings) for one object's changed functions."""
    if info is None:
        if not changed:
            return {}, []
        return {}, [ReportWarning("no-debug-info", None,
                                  f"{objname}: no DWARF debug info; changed functions cannot be matched to the "
                                  "patch's hunks nor to inlined callees (compile with -g)")]
    changed_base = {base_name(n) for n in changed}

    def callee_changed(callee: str) -> str | None:
        """'' when the callee surely changed, 'likely' for the heuristic, None when not."""
        if hunks is not None:
            return "" if info.touched(callee, hunks) else None
        if callee in changed_base:
            return ""
        callers = info.callers_of(callee)
        if len(callers) >= 2 and all(c in changed_base for c in callers):
            return "likely"
        return None

    reasons: dict[str, list[str]] = {}
    warnings: list[ReportWarning] = []
    changed_callees: dict[str, str] = {}
    for name in changed:
        base = base_name(name)
        callees = {}
        for callee in sorted(info.inlined.get(base, ())):
            verdict = callee_changed(callee)
            if verdict is not None:
                callees[callee] = verdict
        changed_callees.update(callees)
        if not callees:
            continue  # report.explain says what explains it, or that nothing does
        reasons[name] = [f"changed inlined callee {c}" + (" (likely)" if v else "") for c, v in callees.items()]
        if hunks is not None and not info.touched(base, hunks):
            warnings.append(ReportWarning(
                "inlined-callee-only", name,
                f"{name} changed only because inlined callee(s) {', '.join(callees)} changed; its own source "
                "is untouched"))
    for callee in sorted(changed_callees):
        callers = info.callers_of(callee)
        if len(callers) >= INLINED_INTO_MANY:
            shown = ", ".join(callers[:8]) + (", ..." if len(callers) > 8 else "")
            warnings.append(ReportWarning(
                "inlined-into-many", callee,
                f"changed function {callee} is inlined into {len(callers)} functions ({shown}): the patch "
                "replaces every one whose code changed"))
    return reasons, warnings
