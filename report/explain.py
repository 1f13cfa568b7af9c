"""Which hunks of the patches explain each changed or new function, and a likely cause when none does.

A build can change functions the patch never touched: a file the build regenerates (a version or build-id
header, redis's release.c), `__DATE__`/`__TIME__`, a changed compiler flag. A reviewer must tell those
from the patch's own changes. A hunk explains a function when (DWARF of both objects, report.sourcemap):
- a line it adds lies in the function's own source in the patched object (from its declaration to its
  last line with code), or a line it removes does in the original object;
- it lands in the extent of a callee inlined into the function, or on a line the function's code comes
  from (a header's inline code);
- it changes a macro, struct/union/enum or typedef whose name the function's own source uses.
A function no hunk explains gets the likely cause: a file the build generated, a string that looks like a
date, time or build id in its changed instructions, else a changed header or flag.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from patch_build.diffobj.linked import read_model
from patch_build.report.disasm import function_diff
from patch_build.report.model import Explanation, FunctionDiff
from patch_build.report.patches import SourceHunk, same_file
from patch_build.report.sourcemap import SourceMap, base_name, read_source_map

MAX_SOURCE_BYTES = 16 << 20  # a source file larger than this is not read for names
_DEFINED = (
    re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)"),
    re.compile(r"\b(?:struct|union|enum)\s+([A-Za-z_]\w*)\s*\{"),
    re.compile(r"^\s*typedef\b.*?\b([A-Za-z_]\w*)\s*(?:\[[^\]]*\])?\s*;"),
)
_AGGREGATE = re.compile(r"\b(?:struct|union|enum)\s*([A-Za-z_]\w*)?[^;()]*\{")  # opens a body (tag optional)
_CLOSING = re.compile(r"^\s*\}\s*([A-Za-z_]\w*)?")  # `} name;` closes a typedef'd body
_SECTION = re.compile(r"\b(?:struct|union|enum)\s+([A-Za-z_]\w*)")  # diff -p's section: the enclosing type
_DATE = re.compile(r'"[^"]*\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{4}\b')
_TIME = re.compile(r'"[^"]*\b\d\d:\d\d:\d\d\b')
_BUILD_ID = re.compile(r'"[^"]*\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{8,}\b')
_EPOCH = re.compile(r'"[^"]*\b1\d{9}\b')
_INCLUDE = re.compile(r'^\s*#\s*include\s*["<]([^">]+)[">]', re.M)


@dataclass
class UnitSources:
    """What explaining one unit's functions needs beyond the two objects' source maps."""
    hunks: list[SourceHunk]  # every hunk of the patches, in order (ids are positions + 1)
    tree: Path | None = None  # where the sources are read (macro and type names, #include lines)
    source: str | None = None  # the unit's source file, relative to the tree
    generated: tuple[str, ...] = ()  # files the build wrote that no patch touches, relative to the tree


def defined_names(hunk: SourceHunk) -> set[str]:
    """Macros, aggregates and typedefs a hunk's changed lines define or lie inside: the tag of the body a
    changed line is in, the typedef name its closing line gives, or the type `diff -p` names in the header
    when the hunk starts inside a body."""
    names: set[str] = set()
    section = _SECTION.search(hunk.header.split("@@", 2)[-1])
    inside, changed_inside = (section.group(1) if section else None), False
    for line in hunk.text:
        body = line[1:]
        if line[:1] in "+-":
            names.update(m.group(1) for pattern in _DEFINED for m in [pattern.search(body)] if m)
        opened = _AGGREGATE.search(body)
        if opened:
            inside, changed_inside = opened.group(1) or "", False
        if line[:1] in "+-" and inside is not None:
            changed_inside = True
            if inside:
                names.add(inside)
        closed = _CLOSING.match(body)
        if closed and inside is not None:
            if changed_inside and closed.group(1):
                names.add(closed.group(1))
            inside = None
    return names


class SourceFiles:
    """Source files of the tree, read once each, with a bound."""

    def __init__(self, tree: Path | None):
        self.tree = tree
        self._text: dict[str, list[str]] = {}

    def _find(self, path: str) -> Path | None:
        """The tree's file a DWARF path names. DWARF may name it by another directory (the build maps the
        scratch tree back to SRCDIR, whose copy is unpatched): the longest tail of the path in the tree."""
        if self.tree is None:
            return Path(path) if os.path.isabs(path) else None
        parts = Path(path).parts
        for i in range(len(parts)):
            candidate = self.tree.joinpath(*parts[i:]) if not os.path.isabs(parts[i]) else None
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def lines(self, path: str) -> list[str]:
        if path not in self._text:
            self._text[path] = []
            candidate = self._find(path)
            if candidate is not None:
                try:
                    with open(candidate, "rb") as f:
                        self._text[path] = f.read(MAX_SOURCE_BYTES).decode("utf-8", "replace").splitlines()
                except OSError:
                    pass
        return self._text[path]


def _hits(lines: set[int], first: int, last: int) -> list[int]:
    return sorted(n for n in lines if first <= n <= last)


def _line_list(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:6]))
    return shown + (", ..." if len(numbers) > 6 else "")


def explain(symbol: str, old_symbol: str | None, unit: UnitSources, orig: SourceMap | None,
            patched: SourceMap | None, sources: SourceFiles | None = None) -> list[Explanation]:
    """The hunks that explain the change of `symbol` (`old_symbol` in the original object; None: new)."""
    sources = sources or SourceFiles(unit.tree)
    found: list[Explanation] = []
    sides = [(patched, symbol, "added")] + ([(orig, old_symbol, "removed")] if old_symbol else [])
    for hunk_id, hunk in enumerate(unit.hunks, 1):
        hows: list[str] = []
        for smap, sym, which in sides:
            if smap is None:
                continue
            changed = getattr(hunk, which)
            name = base_name(sym)
            side: list[str] = []
            for file, first, last in smap.span(name, sym):
                if same_file(file, hunk.path) and (hit := _hits(changed, first, last)):
                    side.append(f"{which} own line(s) {_line_list(hit)}")
            side += [f"inlined callee {callee}" for callee in sorted(smap.inlined.get(name, ()))
                     if any(same_file(file, hunk.path) and _hits(changed, first, last)
                            for file, first, last in smap.span(callee, sym))]
            if not side:  # code from lines of no function known by name (a header's inline code)
                side += [f"{which} line(s) {hunk.path}:{_line_list(hit)} its code comes from"
                         for file, lines in sorted(smap.lines.get(sym, {}).items())
                         if same_file(file, hunk.path) and (hit := sorted(lines & changed))]
            hows += side
        if not hows and patched is not None:
            names = defined_names(hunk)
            if names:
                # The tree holds the patched sources (user space) or the original ones again (kernel: the
                # patches are reverted): each side's span read from it, one of them is the function.
                text = "\n".join(line for smap, sym, _ in sides if smap is not None
                                 for file, first, last in smap.span(base_name(sym), sym)
                                 for line in sources.lines(file)[first - 1:last])
                used = sorted(n for n in names if re.search(rf"\b{re.escape(n)}\b", text))
                hows += [f"uses changed {n}" for n in used]
        if hows:
            found.append(Explanation(hunk=hunk_id, how="; ".join(dict.fromkeys(hows))))
    return found


def likely_cause(symbol: str, unit: UnitSources, patched: SourceMap | None, diff: FunctionDiff | None,
                 sources: SourceFiles | None = None) -> str:
    """Why a function no hunk explains probably changed, as a reader can check it."""
    sources = sources or SourceFiles(unit.tree)
    causes = []
    files = set(patched.lines.get(symbol, {})) if patched is not None else set()
    if unit.source:
        files.add(unit.source)
    generated = [g for g in unit.generated if any(same_file(f, g) for f in files)]
    if unit.source:
        included = {os.path.basename(i) for i in _INCLUDE.findall("\n".join(sources.lines(unit.source)))}
        generated += [g for g in unit.generated if os.path.basename(g) in included and g not in generated]
    if generated:
        causes.append(f"a file the build generated ({', '.join(sorted(generated))}), which no patch touches")
    changed_text = " ".join(text for row in (diff.rows if diff else []) if row.tag != "equal"
                            for text in (row.old_text, row.new_text) if text)
    for pattern, what in ((_DATE, "a date (`__DATE__`)"), (_TIME, "a time of day (`__TIME__`)"),
                          (_EPOCH, "a timestamp"), (_BUILD_ID, "a build id")):
        if pattern.search(changed_text):
            causes.append(f"{what} in a string it uses")
    if not causes:
        return ("no hunk lands in its lines, in a callee inlined into it or in a macro or type it uses: "
                "a changed header, compiler flag or a build that is not reproducible")
    return "; ".join(causes)


def explain_object(orig_path: str, patched_path: str, functions: list[tuple[str, str | None]], unit: UnitSources,
                   orig: SourceMap | None = None, patched: SourceMap | None = None,
                   diffs: dict[str, FunctionDiff] | None = None) -> dict[str, tuple[list[Explanation], str | None]]:
    """symbol -> (the hunks that explain it, else its likely cause) for each (symbol, original symbol or None
    when new) of one compared unit; empty when the patched object has no DWARF. Source maps and disassembly
    diffs are read here unless given."""
    patched = patched if patched is not None else read_source_map(patched_path)
    if patched is None:  # no DWARF: nothing can be told (the report's no-debug-info warning says so)
        return {}
    orig = orig if orig is not None else read_source_map(orig_path)
    sources = SourceFiles(unit.tree)
    diffs = dict(diffs or {})
    objects = None
    result = {}
    for symbol, old in functions:
        found = explain(symbol, old, unit, orig, patched, sources)
        if found:
            result[symbol] = (found, None)
            continue
        if symbol not in diffs:
            objects = objects or (read_model(orig_path), read_model(patched_path))
            diffs[symbol] = function_diff(objects[0] if old else None, old, objects[1], symbol)
        result[symbol] = ([], likely_cause(symbol, unit, patched, diffs[symbol], sources))
    return result


def unexplained_changes(result, unit: UnitSources) -> tuple[list[dict], dict[str, str]]:
    """What --only-explained leaves out of the module, from a diffobj DiffResult or its report() dict: (the
    differ's entries of the changed functions no hunk explains, symbol -> likely cause). New functions
    stay: the patch's own code calls them."""
    d = result.report() if hasattr(result, "report") else result
    changes = d["changed_functions"]
    explained = explain_object(d["orig"], d["patched"], [(c["name"], c["old_name"]) for c in changes], unit)
    left_out = [c for c in changes if c["name"] in explained and not explained[c["name"]][0]]
    return left_out, {c["name"]: explained[c["name"]][1] for c in left_out}


def left_out_note(source: str, symbol: str, cause: str) -> str:
    """The step-log line of a function --only-explained leaves out."""
    return f"left out (--only-explained): {source}: {symbol}: no hunk of the patches explains its change; " \
           f"likely cause: {cause}"


def all_left_out_message(symbols: list[str]) -> str:
    """Why a build whose every changed function was left out has no functional change (exit 3)."""
    return (f"no functional change: no hunk of the patches explains any changed function ({', '.join(symbols)}); "
            "--only-explained left them all out")
