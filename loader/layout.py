"""Lay a patch module out in mappings and relocate it for given addresses.

Each target object of the module gets one mapping near it (rel32 reach) holding the sections its
replacement functions need, found by following relocations from them: read-only sections both need are
copied into both; writable ones cannot be, and are refused. A mapping holds, each part page-aligned: the
state header (read-only; the first mapping only), the code (read+execute: executable sections, then
far-call stubs), read-only data (read-only sections, then the patch's GOT), and writable data (writable
sections, .bss zero-filled, then the `struct object` libgcc keeps for registered frames). The unwind
information of the code a mapping holds (`.eh_frame`, its LSDAs, the personality pointer) goes with it. A
plan does not depend on the address, so its size is known before the mapping is placed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from patch_build.elfcore.constants import SHF_TLS, SHN_ABS, SHT_NOBITS, SHT_PROGBITS, SHT_X86_64_UNWIND
from patch_build.elfcore.model import ObjectFile, Section, Symbol
from patch_build.loader import x86_64 as arch
from patch_build.loader.ehframe import EH_FRAME, unwind_section
from patch_build.loader.remote import PROT_EXEC, PROT_READ, PROT_WRITE

PAGE = 4096
FRAME_OBJECT_SIZE = 64  # libgcc's struct object (6 words), what __register_frame_info links in its lists


class LayoutError(Exception):
    pass


def align(value: int, to: int) -> int:
    return (value + to - 1) & ~(to - 1) if to > 1 else value


@dataclass
class Plan:
    obj: ObjectFile
    sections: list[Section]  # what this mapping holds
    header: int  # bytes reserved for the header
    placed: dict[int, int] = field(default_factory=dict)  # section index -> offset in the mapping
    regions: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, size, prot)
    got: dict[int, int] = field(default_factory=dict)  # symbol index -> offset of its GOT slot
    got_offset: int = 0
    stubs: dict[int, int] = field(default_factory=dict)  # symbol index -> offset of its far-call stub
    code: tuple[int, int] = (0, 0)  # offsets of the code part
    unwind: tuple[int, int] | None = None  # offsets of the .eh_frame and of its frame object, when it has one
    size: int = 0


def loaded_sections(obj: ObjectFile) -> list[Section]:
    return [s for s in obj.sections if s.is_alloc and s.type in (SHT_PROGBITS, SHT_NOBITS, SHT_X86_64_UNWIND)]


def _unwritten_pointers(sec: Section) -> bool:
    """`DW.ref.*` cells (the personality routine's address, which the unwind information points to): in
    writable data for the dynamic linker's sake, never written by the program, so each mapping may have
    its own copy."""
    return bool(sec.symbols) and all(sym.name.startswith("DW.ref.") for sym in sec.symbols)


def _reach(todo: list[Section], seen: dict[int, Section], loaded: set[int], owner: dict[int, str],
           target: str) -> None:
    """Add to `seen` the sections in `todo` and all they refer to through relocations."""
    while todo:
        sec = todo.pop()
        if sec.index in seen:
            continue
        if sec.index not in loaded:
            raise LayoutError(f"section {sec.name} is referenced by code but is not loadable")
        seen[sec.index] = sec
        shared = sec.is_writable and not _unwritten_pointers(sec)
        if shared and owner.setdefault(sec.index, target) != target:
            raise LayoutError(f"data section {sec.name} is used by the code of both {owner[sec.index]} and "
                              f"{target}, which lie too far apart to share it")
        todo += [r.symbol.section for r in sec.relocations if r.symbol.is_defined and r.symbol.section]


def partition(obj: ObjectFile, roots: dict[str, list[str]]) -> dict[str, list[Section]]:
    """For each target, the sections its new functions (`roots`: target -> function symbol names) need."""
    loaded = {s.index for s in loaded_sections(obj)}
    owner: dict[int, str] = {}  # writable section -> the one target it may belong to
    groups = {}
    for target, names in roots.items():
        todo = []
        for name in names:
            sym = next((s for s in obj.symbols if s.name == name and s.is_function and s.is_defined), None)
            if sym is None or sym.section is None:
                raise LayoutError(f"the module has no function {name}")
            todo.append(sym.section)
        seen: dict[int, Section] = {}
        _reach(todo, seen, loaded, owner, target)
        unwind = unwind_section(obj, {i for i, sec in seen.items() if sec.is_text})
        if unwind is not None:
            _reach([unwind], seen, loaded, owner, target)  # with the LSDAs and personality pointer it refers to
        groups[target] = sorted(seen.values(), key=lambda s: s.index)
    return groups


def plan(obj: ObjectFile, sections: list[Section], header_bytes: int) -> Plan:
    p = Plan(obj, sections, align(header_bytes, PAGE))
    for s in sections:
        if s.flags & SHF_TLS:
            raise LayoutError(f"section {s.name}: thread-local storage in a patch is not supported")
    for sec in sections:
        for rel in sec.relocations:
            if arch.needs_got_slot(rel.type):
                p.got.setdefault(rel.symbol.index, len(p.got) * arch.GOT_ENTRY_SIZE)
            if not rel.symbol.is_defined and arch.may_need_stub(rel.type, rel.symbol.is_function):
                p.stubs.setdefault(rel.symbol.index, len(p.stubs) * arch.STUB_SIZE)
    eh_frame = next((s for s in sections if s.name == EH_FRAME), None)
    at = p.header
    if p.header:
        p.regions.append((0, p.header, PROT_READ))
    for kind, pick, prot in (("code", lambda s: s.is_text, PROT_READ | PROT_EXEC),
                             ("ro", lambda s: not s.is_text and not s.is_writable, PROT_READ),
                             ("rw", lambda s: s.is_writable and not s.is_text, PROT_READ | PROT_WRITE)):
        start = at
        for sec in (s for s in sections if pick(s)):
            at = align(at, max(sec.addralign, 1))
            p.placed[sec.index] = at
            at += sec.size
        if kind == "code":
            at = align(at, 16)
            p.stubs = {k: at + v for k, v in p.stubs.items()}
            at += len(p.stubs) * arch.STUB_SIZE
            p.code = (start, at)
        elif kind == "ro":
            at = align(at, 8)
            p.got_offset = at
            p.got = {k: at + v for k, v in p.got.items()}
            at += len(p.got) * arch.GOT_ENTRY_SIZE
        elif eh_frame is not None:  # rw: libgcc writes its struct object
            at = align(at, 8)
            p.unwind = (p.placed[eh_frame.index], at)
            at += FRAME_OBJECT_SIZE
        end = align(at, PAGE)
        if end > start:
            p.regions.append((start, end - start, prot))
        at = end
    p.size = at
    return p


Resolver = Callable[[Symbol], tuple[int, int]]  # undefined symbol -> (address, size)


def symbol_address(p: Plan, base: int, sym: Symbol, resolve: Resolver) -> tuple[int, int]:
    if sym.shndx == SHN_ABS:
        return sym.value, sym.size
    if sym.is_defined and sym.section is not None:
        if sym.section.index not in p.placed:
            raise LayoutError(f"symbol {sym.display} is in section {sym.section.name}, which is not loaded")
        return base + p.placed[sym.section.index] + (0 if sym.is_section else sym.value), sym.size
    return resolve(sym)


def build(p: Plan, base: int, resolve: Resolver) -> bytearray:
    """The mapping's contents (header left zero) for a mapping at `base`."""
    image = bytearray(p.size)
    for sec in p.sections:
        if not sec.is_nobits:
            off = p.placed[sec.index]
            image[off:off + sec.size] = sec.data
    targets: dict[int, int] = {}
    for sec in p.sections:
        for rel in sec.relocations:
            S, Z = symbol_address(p, base, rel.symbol, resolve)
            targets[rel.symbol.index] = S
            off = p.placed[sec.index] + rel.offset
            slot = p.got.get(rel.symbol.index)
            stub = p.stubs.get(rel.symbol.index)
            try:
                arch.apply(image, off, rel.type, S=S, A=rel.addend, P=base + off, Z=Z,
                           got_slot=None if slot is None else base + slot, got=base + p.got_offset,
                           stub=None if stub is None else base + stub, what=f"{sec.name}+{rel.offset:#x}")
            except (ValueError, arch.RelocationError) as e:
                raise LayoutError(str(e)) from None
    for index, off in p.got.items():
        image[off:off + 8] = targets[index].to_bytes(8, "little")
    for index, off in p.stubs.items():
        image[off:off + arch.STUB_SIZE] = arch.far_stub(targets[index])
    return image


def function_address(p: Plan, base: int, name: str) -> tuple[int, int]:
    """Address and size of the module's function `name`."""
    for sym in p.obj.symbols:
        if sym.name == name and sym.is_function and sym.section is not None and sym.section.index in p.placed:
            return base + p.placed[sym.section.index] + sym.value, sym.size
    raise LayoutError(f"the module has no function {name}")
