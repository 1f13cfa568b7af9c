"""Output: turn the marked model into the object the patch module is linked from.

Included sections are copied; each relocation is rewritten to point at the copy when its target is
included, and otherwise at an undefined symbol naming the running original (docs/design.md, "Names of
references to the original"). `.kpatch.funcs` gets one entry per redirected function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from patch_build.common.errors import InternalError
from patch_build.diffobj import names
from patch_build.diffobj.compare import extent
from patch_build.diffobj.model import (
    SHF_ALLOC,
    SHF_GROUP,
    SHF_MERGE,
    SHF_STRINGS,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FILE,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
    ObjectFile,
    OutputObject,
    OutRelocation,
    OutSection,
    OutSymbol,
    Relocation,
    Section,
    Status,
    Symbol,
)
from patch_build.diffobj.targets import TargetResolver
from patch_build.elfcore.x86_64 import R_X86_64_64
from patch_build.patchformat import sections as funcs_format
from patch_build.patchformat.names import reference_name



@dataclass
class FunctionChange:
    name: str  # in the patched object (and the output)
    old_name: str  # in the original, i.e. in the running target
    objname: str
    sympos: int
    old_size: int
    new_size: int
    reasons: list[str] = field(default_factory=list)


@dataclass
class ReferenceNamer:
    """Names the undefined symbol through which the patch reaches a symbol of the running original."""

    kernel: bool
    objname: str
    sympos: Callable[[Symbol], int] | None = None
    exported: set[str] | None = None  # kernel: names the running kernel exports
    extern_objname: Callable[[str], str] | None = None  # kernel: which object defines an extern
    provided: set[str] = field(default_factory=set)  # new globals of the patch's other units
    deployed_size: Callable[[Symbol], int | None] | None = None  # an original function's size in the target

    def position(self, orig: Symbol) -> int:
        return self.sympos(orig) if self.sympos else 0

    def _klp(self, objname: str, name: str, pos: int) -> str:
        return reference_name(True, objname, name, pos)

    def defined(self, orig: Symbol) -> str:
        """For a symbol the original object defines (orig: its symbol in the ORIGINAL object)."""
        if orig.is_local:
            return reference_name(self.kernel, self.objname, orig.name, self.position(orig))
        if self.kernel and self.exported is not None and orig.name not in self.exported:
            return self._klp(self.objname, orig.name, 0)
        return orig.name

    def extern(self, name: str) -> str:
        """For a symbol the unit only uses (undefined in both objects). A new global of another unit of the
        patch is not in the running kernel: the module links it in, under its plain name."""
        if self.kernel and self.exported is not None and name not in self.exported and name not in self.provided:
            objname = self.extern_objname(name) if self.extern_objname else "vmlinux"
            return self._klp(objname, name, 0)
        return name


def redirected_functions(patched: ObjectFile, namer: ReferenceNamer) -> list[FunctionChange]:
    """Changed functions whose running original gets redirected (`.cold` pieces ride with their parent)."""
    changes = []
    for sym in patched.functions():
        if sym.status is not Status.CHANGED or sym.twin is None or names.is_cold_piece(sym.name):
            continue
        o_lo, o_hi = extent(sym.twin)
        p_lo, p_hi = extent(sym)
        pos = namer.position(sym.twin) if sym.twin.is_local else 0
        deployed = namer.deployed_size(sym.twin) if namer.deployed_size else None
        changes.append(FunctionChange(sym.name, sym.twin.name, namer.objname, pos,
                                      o_hi - o_lo if deployed is None else deployed, p_hi - p_lo, list(sym.reasons)))
    return changes


def _primary(orig: Symbol) -> Symbol:
    """The name to reference a function by: the primary one, global when there is one (not gcc's .localalias)."""
    return orig.alias_of or orig


def build_output(patched: ObjectFile, resolver: TargetResolver, namer: ReferenceNamer,
                 changes: list[FunctionChange]) -> OutputObject:
    """The output object, every relocation checked (`check_references`) before anyone can write it."""
    out_of: dict[Section, OutSection] = {}
    sections: list[OutSection] = []
    symbols: list[OutSymbol] = [OutSymbol(patched.source_file or "patch", STT_FILE, STB_LOCAL, shndx=0xFFF1)]
    for sec in patched.sections:
        if sec.included:
            out = OutSection(sec.name, sec.type, sec.flags & ~SHF_GROUP, sec.addralign, sec.entsize, sec.data)
            out.section_symbol = OutSymbol("", STT_SECTION, STB_LOCAL, section=out)
            symbols.append(out.section_symbol)
            out_of[sec] = out
            sections.append(out)

    copy_of: dict[Symbol, OutSymbol] = {}
    for sym in patched.symbols:
        if sym.section is None or sym.section not in out_of or sym.is_section or sym.type == STT_FILE:
            continue
        copy = OutSymbol(sym.name, sym.type, sym.bind, sym.other, out_of[sym.section], sym.value, sym.size)
        copy_of[sym] = copy
        symbols.append(copy)

    undefined: dict[str, OutSymbol] = {}

    def reference(name: str, like: Symbol) -> OutSymbol:
        if name not in undefined:
            # ld checks TLS relocations against TLS symbols; other types only inform readers.
            stype = like.type if like.type in (STT_OBJECT, STT_TLS) or like.is_function else STT_NOTYPE
            undefined[name] = OutSymbol(name, stype, STB_GLOBAL)
            symbols.append(undefined[name])
        return undefined[name]

    for sec in patched.sections:
        out = out_of.get(sec)
        if out is None:
            continue
        for rel in sec.relocations:
            sym = rel.symbol
            if sym.section is not None and sym.section in out_of:
                target = out_of[sym.section]
                if sym.is_section:
                    out.relocations.append(OutRelocation(rel.offset, rel.type, target.section_symbol, rel.addend))
                else:  # labels too: ld finds an entry of a merged (SHF_MERGE) section by its symbol
                    out.relocations.append(OutRelocation(rel.offset, rel.type, copy_of[sym], rel.addend))
            elif not sym.is_defined:
                out.relocations.append(OutRelocation(rel.offset, rel.type, reference(namer.extern(sym.name), sym),
                                                     rel.addend))
            else:
                t = resolver.resolve(sec, rel)
                if t.symbol is None or t.symbol.twin is None:
                    raise InternalError(f"{sec.name}+{rel.offset:#x}: reference to {sym.display}{rel.addend:+#x} "
                                        "is neither in the patch nor in the original")
                orig = _primary(t.symbol.twin)
                out.relocations.append(OutRelocation(rel.offset, rel.type, reference(namer.defined(orig), orig),
                                                     t.addend))

    funcs = _add_funcs_table(sections, symbols, copy_of, patched, changes) if changes else None
    sections.append(OutSection(".note.GNU-stack", SHT_PROGBITS, 0, 1, 0, b""))
    check_references(patched, out_of, namer)
    if funcs is not None:
        _check_funcs_table(*funcs, changes)
    return OutputObject(sections, symbols, patched.source_file)


def check_references(patched: ObjectFile, out_of: dict[Section, OutSection], namer: ReferenceNamer) -> None:
    """Check each output relocation against what its relocation in the patched object references, resolved
    afresh (no cache shared with the passes that built the output). A wrong reference in a live patch
    corrupts the running program: a mismatch is our bug, reported before anything is written."""
    resolver = TargetResolver(patched)
    copied = {out: sec for sec, out in out_of.items()}
    for sec, out in out_of.items():
        if len(out.relocations) != len(sec.relocations):
            raise InternalError(f"{sec.name}: {len(out.relocations)} relocations written for "
                                f"{len(sec.relocations)}")
        for rel, written in zip(sec.relocations, out.relocations):
            wrong = _wrong_reference(resolver, namer, copied, sec, rel, written)
            if wrong:
                raise InternalError(f"{sec.name}+{rel.offset:#x}: {wrong}")


def _wrong_reference(resolver: TargetResolver, namer: ReferenceNamer, copied: dict[OutSection, Section],
                     sec: Section, rel: Relocation, written: OutRelocation) -> str | None:
    sym = rel.symbol
    meant = f"reference to {sym.display}{rel.addend:+#x}"
    if (written.offset, written.type) != (rel.offset, rel.type):
        return f"{meant} written at {written.offset:#x} with type {written.type}"
    to = written.symbol
    if to.section is not None:  # to the patch's own copy: the same section, the same address
        base = 0 if sym.is_section else sym.value
        if copied.get(to.section) is not sym.section or to.value + written.addend != base + rel.addend:
            return f"{meant} written as {to.section.name}{to.value + written.addend:+#x}"
        return None
    if not sym.is_defined:
        name, addend = namer.extern(sym.name), rel.addend
    else:
        t = resolver.resolve(sec, rel)
        if t.symbol is None or t.symbol.twin is None or t.section is not sym.section:
            return f"{meant} resolves to no symbol of the original"
        name, addend = namer.defined(_primary(t.symbol.twin)), t.addend
    if to.name != name or written.addend != addend:
        return f"{meant} written as {to.name}{written.addend:+#x}, not {name}{addend:+#x}"
    return None


def _add_funcs_table(sections, symbols, copy_of, patched: ObjectFile,
                     changes: list[FunctionChange]) -> tuple[OutSection, OutSection]:
    """Append `.kpatch.funcs` and its strings; return both, for the check."""
    strings = bytearray()
    offsets: dict[str, int] = {}

    def string(s: str) -> int:
        if s not in offsets:
            offsets[s] = len(strings)
            strings.extend(s.encode() + b"\0")
        return offsets[s]

    strtab = OutSection(funcs_format.STRINGS, SHT_PROGBITS, SHF_ALLOC | SHF_MERGE | SHF_STRINGS, 1, 1, b"")
    strtab.section_symbol = OutSymbol("", STT_SECTION, STB_LOCAL, section=strtab)
    funcs = OutSection(funcs_format.FUNCS, SHT_PROGBITS, SHF_ALLOC, 8, funcs_format.RECORD.size, b"")
    funcs.section_symbol = OutSymbol("", STT_SECTION, STB_LOCAL, section=funcs)
    symbols += [strtab.section_symbol, funcs.section_symbol]
    by_name = {s.name: s for s in patched.functions()}
    table = bytearray()
    for i, ch in enumerate(changes):
        base = i * funcs_format.RECORD.size
        table += funcs_format.FuncRecord(0, ch.new_size, 0, ch.old_size, ch.sympos, 0, 0).pack()
        new_sym = copy_of[by_name[ch.name]]
        funcs.relocations += [
            OutRelocation(base + funcs_format.OFFSET["new_addr"], R_X86_64_64, new_sym, 0),
            OutRelocation(base + funcs_format.OFFSET["name"], R_X86_64_64, strtab.section_symbol, string(ch.old_name)),
            OutRelocation(base + funcs_format.OFFSET["objname"], R_X86_64_64, strtab.section_symbol,
                          string(ch.objname)),
        ]
    strtab.data = bytes(strings)
    funcs.data = bytes(table)
    sections += [strtab, funcs]
    return funcs, strtab


def _check_funcs_table(funcs: OutSection, strtab: OutSection, changes: list[FunctionChange]) -> None:
    """Each entry must point at the new function and name the one it replaces."""
    by_offset = {r.offset: r for r in funcs.relocations}

    def entry_field(i: int, name: str) -> str | None:
        r = by_offset.get(i * funcs_format.RECORD.size + funcs_format.OFFSET[name])
        if r is None:
            return None
        if name == "new_addr":
            return r.symbol.name if r.addend == 0 and r.symbol.section is not None else None
        return _string(strtab.data, r.addend) if r.symbol is strtab.section_symbol else None

    for i, ch in enumerate(changes):
        got = tuple(entry_field(i, name) for name in ("new_addr", "name", "objname"))
        if got != (ch.name, ch.old_name, ch.objname):
            raise InternalError(f".kpatch.funcs entry {i} reads {got}, not {(ch.name, ch.old_name, ch.objname)}")


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset:end].decode(errors="replace") if 0 <= offset <= end else ""
