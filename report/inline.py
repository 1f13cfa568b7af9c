"""Which changed functions changed because of a callee inlined into them (DWARF, pyelftools).

The compiler copies an inline callee's body into each caller, so one edited `static inline` helper can
change a dozen functions whose own source nobody touched. A release engineer should see that: the patch
replaces all of them. The patched object's DWARF says which callees are inlined into which functions
(DW_TAG_inlined_subroutine) and where each function is declared (DW_AT_decl_file/decl_line). A function's
source extent runs from its declaration line to the next function's in the same file; a function is
*touched* when a hunk of the applied patches lands in its extent. Without the patches (a bare
`patch-diff`), a callee counts as changed when its out-of-line copy changed, or, heuristically, when every
function it is inlined into (at least two) changed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from report.dwarf import dwarf_errors, read_dwarf
from report.model import ReportWarning

INLINED_INTO_MANY = 3  # warn when a changed callee is inlined into at least this many functions
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def changed_lines(patch_text: str) -> dict[str, set[int]]:
    """New-side line numbers each file's hunks add or remove at, keyed by path without its a/ b/ prefix."""
    result: dict[str, set[int]] = {}
    lines: set[int] | None = None
    new_line = old_left = new_left = 0
    for line in patch_text.splitlines():
        if old_left > 0 or new_left > 0:  # inside a hunk: its header said how many lines follow
            if line.startswith("+"):
                lines.add(new_line)
                new_line, new_left = new_line + 1, new_left - 1
            elif line.startswith("-"):
                lines.add(new_line)  # a removal sits between new_line - 1 and new_line
                old_left -= 1
            elif not line.startswith("\\"):  # context ("\ No newline at end of file" is neither)
                new_line, old_left, new_left = new_line + 1, old_left - 1, new_left - 1
            continue
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].strip()
            lines = None if path == "/dev/null" else result.setdefault(path.split("/", 1)[-1], set())
            continue
        match = _HUNK.match(line)
        if match and lines is not None:
            old_left = int(match.group(1) or 1)
            new_line, new_left = int(match.group(2)), int(match.group(3) or 1)
    return result


@dataclass
class _Subprogram:
    name: str
    file: str | None = None
    line: int | None = None
    inlined: set[str] = field(default_factory=set)  # callees inlined into this (concrete) function


@dataclass
class InlineInfo:
    """What the patched object's DWARF says about inlining: function name -> callees inlined into it."""

    inlined: dict[str, set[str]]
    extents: dict[str, list[tuple[str, int, int]]]  # name -> (file, first line, last line)

    def callers_of(self, callee: str) -> list[str]:
        return sorted(f for f, callees in self.inlined.items() if callee in callees)

    def touched(self, name: str, hunks: dict[str, set[int]]) -> bool:
        for path, first, last in self.extents.get(name, []):
            for patch_path, lines in hunks.items():
                if path == patch_path or path.endswith("/" + patch_path):
                    if any(first <= n <= last for n in lines):
                        return True
        return False


def _die_name(die) -> str | None:
    for _ in range(4):  # follow abstract_origin / specification to the DIE that carries the name
        attrs = die.attributes
        for key in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name", "DW_AT_name"):
            if key in attrs:
                return attrs[key].value.decode("utf-8", "replace")
        ref = next((k for k in ("DW_AT_abstract_origin", "DW_AT_specification") if k in attrs), None)
        if ref is None:
            return None
        die = die.get_DIE_from_attribute(ref)
    return None


def _decl(die, files: list[str], version: int) -> tuple[str | None, int | None]:
    attrs = die.attributes
    if "DW_AT_decl_file" not in attrs or "DW_AT_decl_line" not in attrs:
        ref = next((k for k in ("DW_AT_abstract_origin", "DW_AT_specification") if k in attrs), None)
        if ref is not None:
            return _decl(die.get_DIE_from_attribute(ref), files, version)
        return None, None
    index = attrs["DW_AT_decl_file"].value - (0 if version >= 5 else 1)
    return (files[index] if 0 <= index < len(files) else None), attrs["DW_AT_decl_line"].value


def _file_names(dwarf, cu) -> tuple[list[str], int]:
    program = dwarf.line_program_for_CU(cu)
    if program is None:
        return [], 0
    dirs = [d.decode("utf-8", "replace") for d in program["include_directory"]]
    version = program["version"]
    names = []
    for entry in program["file_entry"]:
        name = entry.name.decode("utf-8", "replace")
        d = entry.dir_index - (0 if version >= 5 else 1)
        if not name.startswith("/") and 0 <= d < len(dirs):
            name = f"{dirs[d]}/{name}"
        names.append(name)
    return names, version


def _walk_inlined(die, out: set[str]) -> None:
    for child in die.iter_children():
        if child.tag == "DW_TAG_inlined_subroutine":
            name = _die_name(child)
            if name:
                out.add(name)
        _walk_inlined(child, out)


def _subprograms(dwarf) -> list[_Subprogram]:
    subprograms: list[_Subprogram] = []
    for cu in dwarf.iter_CUs():
        files, version = _file_names(dwarf, cu)
        for die in cu.get_top_DIE().iter_children():
            if die.tag != "DW_TAG_subprogram" or "DW_AT_declaration" in die.attributes:
                continue
            name = _die_name(die)
            if not name:
                continue
            file, line = _decl(die, files, version)
            sub = _Subprogram(name, file, line)
            _walk_inlined(die, sub.inlined)
            subprograms.append(sub)
    return subprograms


def read_inline_info(path: str) -> InlineInfo | None:
    """None when the object has no DWARF."""
    with dwarf_errors(path):
        dwarf = read_dwarf(path)
        if dwarf is None:
            return None
        subprograms = _subprograms(dwarf)
    inlined: dict[str, set[str]] = {}
    by_file: dict[str, list[tuple[int, str]]] = {}
    for sub in subprograms:
        if sub.inlined:
            inlined.setdefault(sub.name, set()).update(sub.inlined)
        if sub.file is not None and sub.line is not None:
            by_file.setdefault(sub.file, []).append((sub.line, sub.name))
    extents: dict[str, list[tuple[str, int, int]]] = {}
    for file, decls in by_file.items():
        starts = sorted(set(decls))
        for i, (line, name) in enumerate(starts):
            nxt = next((n for n, _ in starts[i + 1:] if n > line), None)
            extents.setdefault(name, []).append((file, line, nxt - 1 if nxt else 1 << 30))
    return InlineInfo(inlined, extents)


def _base_name(symbol: str) -> str:
    """`foo.isra.0`, `foo.constprop.0`, `foo.cold` -> `foo`: GCC's clones carry the DWARF name of foo."""
    return symbol.split(".", 1)[0] if not symbol.startswith(".") else symbol


def analyse(info: InlineInfo | None, changed: list[str], hunks: dict[str, set[int]] | None,
            objname: str) -> tuple[dict[str, list[str]], list[ReportWarning]]:
    """(extra reasons per changed function, warnings) for one object's changed functions."""
    if info is None:
        if not changed:
            return {}, []
        return {}, [ReportWarning("no-debug-info", None,
                                  f"{objname}: no DWARF debug info; changes that come from inlined callees "
                                  "cannot be attributed (compile with -g)")]
    changed_base = {_base_name(n) for n in changed}

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
        base = _base_name(name)
        callees = {}
        for callee in sorted(info.inlined.get(base, ())):
            verdict = callee_changed(callee)
            if verdict is not None:
                callees[callee] = verdict
        changed_callees.update(callees)
        if not callees:
            if hunks is not None and base in info.extents and not info.touched(base, hunks):
                warnings.append(ReportWarning(
                    "untouched-source", name,
                    f"{name} changed although no hunk of the patches lands in it or in a callee inlined into "
                    "it: a macro, type, constant or header it uses probably changed"))
            continue
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
