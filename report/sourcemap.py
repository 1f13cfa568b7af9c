"""Which source lines each function of an object was compiled from (DWARF, pyelftools).

Three facts per function, all from the object's own DWARF:
- its declaration (DW_AT_decl_file/decl_line); a function's *extent* runs from there to the next
  function's declaration in the same file;
- the callees inlined into it (DW_TAG_inlined_subroutine);
- the lines its code comes from: the line-table rows inside its symbol's address range, which include the
  lines of the callees inlined into it (in their own files, headers too).
Functions are keyed by their symbol (`foo.isra.0`, `foo.cold` have rows of their own); declarations and
inlining by DWARF name, which GCC's clones share with the function they were made from.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from patch_build.elfcore.constants import ET_REL, SHN_LORESERVE, SHN_UNDEF, STT_FUNC
from patch_build.elfcore.dwarf import dwarf_errors, read_dwarf, text_address
from patch_build.elfcore.headers import E_TYPE_END, elf_type
from patch_build.elfcore.symbols import symbols_of
from patch_build.report.patches import same_file


def base_name(symbol: str) -> str:
    """`foo.isra.0`, `foo.constprop.0`, `foo.cold` -> `foo`: GCC's clones carry the DWARF name of foo."""
    return symbol.split(".", 1)[0] if not symbol.startswith(".") else symbol


@dataclass
class SourceMap:
    inlined: dict[str, set[str]]  # DWARF name -> callees inlined into it
    extents: dict[str, list[tuple[str, int, int]]]  # DWARF name -> (file, first line, last line)
    lines: dict[str, dict[str, set[int]]]  # symbol -> file -> lines its code comes from

    def callers_of(self, callee: str) -> list[str]:
        return sorted(f for f, callees in self.inlined.items() if callee in callees)

    def in_extent(self, name: str, path: str, lines: set[int]) -> bool:
        """Some of `lines` of file `path` lie in the extent of function `name`."""
        return any(same_file(file, path) and any(first <= n <= last for n in lines)
                   for file, first, last in self.extents.get(name, []))

    def touched(self, name: str, hunks: dict[str, set[int]]) -> bool:
        return any(self.in_extent(name, path, lines) for path, lines in hunks.items())

    def span(self, name: str, symbol: str) -> list[tuple[str, int, int]]:
        """(file, first, last) of function `name`'s source as the code of `symbol` uses it (its own, or an
        inlined callee's): from the declaration to the last line of the extent that code comes from (the
        extent alone runs on to the next function, comments and all; a file's last one to its end)."""
        spans = []
        for file, first, last in self.extents.get(name, []):
            rows = [n for n in self.lines.get(symbol, {}).get(file, ()) if first <= n <= last]
            spans.append((file, first, max(rows) if rows else first if last >= 1 << 30 else last))
        return spans


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


def _file_names(program) -> list[str]:
    dirs = [d.decode("utf-8", "replace") for d in program["include_directory"]]
    version = program["version"]
    names = []
    for entry in program["file_entry"]:
        name = entry.name.decode("utf-8", "replace")
        d = entry.dir_index - (0 if version >= 5 else 1)
        if not name.startswith("/") and 0 <= d < len(dirs):
            name = f"{dirs[d]}/{name}"
        names.append(name)
    return names


def _walk_inlined(die, out: set[str]) -> None:
    for child in die.iter_children():
        if child.tag == "DW_TAG_inlined_subroutine":
            name = _die_name(child)
            if name:
                out.add(name)
        _walk_inlined(child, out)


def _function_ranges(path: str) -> dict[str, tuple[int, int]]:
    """symbol -> [start, end) in the addresses `read_dwarf` gives, for each sized function symbol."""
    with open(path, "rb") as f:
        relocatable = elf_type(f.read(E_TYPE_END)) == ET_REL
    ranges = {}
    for sym in symbols_of(path) or ():
        if sym.type != STT_FUNC or not SHN_UNDEF < sym.shndx < SHN_LORESERVE or not sym.size:
            continue
        start = text_address(sym.shndx, sym.value) if relocatable else sym.value
        ranges.setdefault(sym.name, (start, start + sym.size))
    return ranges


def read_source_map(path: str) -> SourceMap | None:
    """None when the object has no DWARF; InputError naming the file when its DWARF is malformed."""
    with dwarf_errors(path):
        return _read_source_map(path)


def _read_source_map(path: str) -> SourceMap | None:
    dwarf = read_dwarf(path)
    if dwarf is None:
        return None
    inlined: dict[str, set[str]] = {}
    by_file: dict[str, list[tuple[int, str]]] = {}
    rows: list[tuple[int, str, int]] = []  # (address, file, line) of every line-table row
    for cu in dwarf.iter_CUs():
        program = dwarf.line_program_for_CU(cu)
        files = _file_names(program) if program is not None else []
        version = program["version"] if program is not None else 0
        for die in cu.get_top_DIE().iter_children():
            if die.tag != "DW_TAG_subprogram" or "DW_AT_declaration" in die.attributes:
                continue
            name = _die_name(die)
            if not name:
                continue
            file, line = _decl(die, files, version)
            callees: set[str] = set()
            _walk_inlined(die, callees)
            if callees:
                inlined.setdefault(name, set()).update(callees)
            if file is not None and line is not None:
                by_file.setdefault(file, []).append((line, name))
        if program is None:
            continue
        for entry in program.get_entries():
            state = entry.state
            if state is None or state.end_sequence or not state.line:
                continue
            index = state.file - (0 if version >= 5 else 1)
            if 0 <= index < len(files):
                rows.append((state.address, files[index], state.line))
    extents: dict[str, list[tuple[str, int, int]]] = {}
    for file, decls in by_file.items():
        starts = sorted(set(decls))
        for i, (line, name) in enumerate(starts):
            nxt = next((n for n, _ in starts[i + 1:] if n > line), None)
            extents.setdefault(name, []).append((file, line, nxt - 1 if nxt else 1 << 30))
    rows.sort()
    addresses = [r[0] for r in rows]
    lines: dict[str, dict[str, set[int]]] = {}
    for symbol, (start, end) in _function_ranges(path).items():
        for _, file, line in rows[bisect.bisect_left(addresses, start):bisect.bisect_left(addresses, end)]:
            lines.setdefault(symbol, {}).setdefault(file, set()).add(line)
    return SourceMap(inlined, extents, lines)
