"""Kernel special sections: keep only the entries that refer to included functions.

Called by `diffobj.diff.diff_objects` in kernel mode, after `include` has set `Section.included` on the
included code: for each special section to keep, set `included` and replace `data` and `relocations`
with the filtered entries (offsets rebased), so the output pass copies it like any other section.
`.altinstr_replacement` is cut down to the replacements the kept `.altinstructions` entries use, and
`.altinstr_aux` (static_cpu_has() slow paths, jumped into from the code) is in CARRIED: the include pass
brings it whole when included code uses it, and follows its relocations. Entry sizes of struct tables come
from the `StructSizes` given (the kernel's own). Also adds a Problem for every changed function without an
fentry call: the livepatch core redirects a function through ftrace, which needs that call.
"""
from __future__ import annotations

from collections import defaultdict

from patch_build.diffobj import names
from patch_build.diffobj.arch import x86_64_special as layout
from patch_build.diffobj.model import STT_NOTYPE, ObjectFile, Relocation, Section, Status, Symbol
from patch_build.diffobj.problems import Problems
from patch_build.diffobj.struct_sizes import StructSizes

CARRIED = frozenset({layout.ALT_AUX})  # code sections the include pass carries whole once included code uses them


def filter_special_sections(patched: ObjectFile, problems: Problems, struct_sizes: StructSizes) -> None:
    _check_fentry(patched, problems)
    code = {s for s in patched.sections if s.included and s.is_text}
    for sec in list(patched.sections):
        spec = layout.SPECIAL_SECTIONS.get(sec.name)
        if spec is None or sec.included:
            continue
        size = spec.fixed_size or struct_sizes.size(spec.struct, sec.name, patched.path)
        count = -(-sec.size // size)  # the last entry may be short (spec.short_last)
        if sec.size % size not in (0, spec.short_last):
            what = f" (struct {spec.struct})" if spec.struct else ""
            problems.add(sec.name, f"size {sec.size} is not a multiple of its {size}-byte entries{what}: "
                                   "wrong entry size for this kernel")
            continue
        at = {r.offset: r for r in sec.relocations}
        keep = [i for i in range(count)
                if (r := at.get(i * size + spec.anchor)) is not None
                and r.symbol.section in code]
        if not keep:
            continue
        _keep_entries(sec, size, keep)
        if spec.paired:
            _keep_paired(patched, spec, struct_sizes, keep, problems)
        if spec.replacement is not None:
            _keep_replacements(sec, spec, size)
        _include_targets(sec)


def _keep_entries(sec: Section, size: int, keep: list[int]) -> None:
    """Keep the entries numbered `keep`, each padded to its full size (a short last one included)."""
    by_entry: dict[int, list[Relocation]] = defaultdict(list)
    for r in sec.relocations:
        by_entry[r.offset // size].append(r)
    data, rels = bytearray(), []
    for new, old in enumerate(keep):
        lo = old * size
        data += sec.data[lo:lo + size].ljust(size, b"\0")
        rels += [Relocation(r.offset - lo + new * size, r.type, r.symbol, r.addend) for r in by_entry[old]]
    sec.data, sec.relocations, sec.included = bytes(data), rels, True


def _keep_paired(patched: ObjectFile, spec: layout.SpecialSection, struct_sizes: StructSizes, keep: list[int],
                 problems: Problems) -> None:
    table = patched.section_named(spec.paired)
    if table is None:
        problems.add(spec.paired, f"missing: {spec.name} indexes it")
        return
    n = struct_sizes.size(spec.paired_struct, table.name, patched.path)
    if table.size % n or max(keep) >= table.size // n:
        problems.add(spec.paired, f"does not match its index table {spec.name} entry for entry with "
                                  f"{n}-byte entries (struct {spec.paired_struct}): wrong entry size for this kernel")
        return
    _keep_entries(table, n, keep)


def _keep_replacements(alt: Section, spec: layout.SpecialSection, size: int) -> None:
    """Cut `.altinstr_replacement` down to the byte ranges the kept entries name, and repoint them."""
    at = {r.offset: r for r in alt.relocations}
    repl: Section | None = None
    ranges: dict[int, int] = {}  # start -> length
    for lo in range(0, alt.size, size):
        r = at.get(lo + spec.replacement)
        if r is None or r.symbol.section is None:
            continue
        repl = r.symbol.section
        start = r.symbol.value + r.addend
        ranges[start] = max(ranges.get(start, 0), alt.data[lo + size - 1])  # u8 replacementlen, last
    if repl is None:
        return
    moved: dict[int, int] = {}  # old start -> new start
    data, rels = bytearray(), []
    for start in sorted(ranges):
        end = start + ranges[start]
        moved[start] = len(data)
        rels += [Relocation(r.offset - start + len(data), r.type, r.symbol, r.addend)
                 for r in repl.relocations if start <= r.offset < end]
        data += repl.data[start:end]
    # New relocations rather than changed addends: a relocation once resolved must not change.
    alt.relocations = [Relocation(r.offset, r.type, r.symbol, moved[r.symbol.value + r.addend] - r.symbol.value)
                       if r.symbol.section is repl and r.offset % size == spec.replacement else r
                       for r in alt.relocations]
    repl.data, repl.relocations, repl.included = bytes(data), rels, True


def _include_targets(sec: Section) -> None:
    """Bring what the kept entries point at and the running kernel lacks: new data, strings (BUG file names)."""
    for r in sec.relocations:
        t = r.symbol.section
        if t is None or t.included or t.is_text:
            continue
        # Assembler labels (.LC0: a string literal) name anonymous data, as a section symbol does.
        label = r.symbol.type == STT_NOTYPE and r.symbol.is_local and r.symbol.name.startswith(".L")
        sym: Symbol | None = None if r.symbol.is_section or label else r.symbol
        if (sym is not None and sym.status is Status.NEW) or (sym is None and (not t.is_writable
                                                                               or t.status is Status.NEW)):
            t.included = True


def _check_fentry(patched: ObjectFile, problems: Problems) -> None:
    """ftrace redirects the RUNNING function, so its original must start with the fentry call. objtool may
    have turned that call into a NOP, keeping an R_X86_64_NONE relocation against __fentry__ there."""
    for f in patched.functions():
        orig = f.twin
        if f.status is not Status.CHANGED or orig is None or names.is_cold_piece(f.name):
            continue
        sites = {orig.value + k for k in layout.FENTRY_FIELD_OFFSETS}
        if not any(r.offset in sites and r.symbol.name == layout.FENTRY for r in orig.section.relocations):
            problems.add(f.name, "has no fentry call at its start (notrace, or built without -pg): ftrace "
                                 "cannot redirect it")
