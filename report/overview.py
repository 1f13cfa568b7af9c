"""The patch at a glance, for the top of the Markdown and HTML reports: per object, its changed and new functions,
each with the number of disassembly rows that differ and that number's share of the largest one of the report
(the length of its bar)."""
from __future__ import annotations

from dataclasses import dataclass

from patch_build.report.model import Report


@dataclass(frozen=True)
class FunctionGlance:
    symbol: str
    shown: str  # the readable (demangled) name
    status: str  # changed | new
    left_out: bool
    unexplained: bool
    changed_rows: int | None  # None: the report has no disassembly of it
    truncated: bool  # the disassembly was cut: at least changed_rows
    share: float  # changed_rows over the report's largest count, 0..1


@dataclass(frozen=True)
class ObjectGlance:
    index: int  # 1-based position in Report.objects (the anchors' numbering)
    objname: str
    unit: str  # the compilation unit's source, else the compared object
    functions: list[FunctionGlance]

    def count(self, status: str) -> int:
        return sum(1 for f in self.functions if f.status == status)


def overview(report: Report) -> list[ObjectGlance]:
    """Objects with at least one changed or new function, in report order; functions in the object's order."""
    rows = {}
    for oi, o in enumerate(report.objects, 1):
        for d in o.diffs:
            rows[oi, d.name] = d
    largest = max((d.changed_rows() for d in rows.values()), default=0)
    glances = []
    for oi, o in enumerate(report.objects, 1):
        functions = []
        for f in o.functions:
            if f.status == "included":
                continue
            d = rows.get((oi, f.name))
            count = d.changed_rows() if d is not None else None
            functions.append(FunctionGlance(
                symbol=f.name, shown=f.demangled or f.name, status=f.status, left_out=f.left_out,
                unexplained=f.unexplained is not None, changed_rows=count, truncated=d is not None and d.truncated,
                share=count / largest if count and largest else 0.0))
        if functions:
            glances.append(ObjectGlance(oi, o.objname, o.source or o.patched, functions))
    return glances
