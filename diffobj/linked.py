"""Read a linked executable (linked with -Wl,--emit-relocs) as an ET_REL-shaped model, for link-diff (issue 13).

With LTO the machine code only exists after the link. A program linked with `--emit-relocs` keeps, per output
section, the relocations of the code it was linked from, so each function of the executable can be read as if
it came from an object built with -ffunction-sections: one section per function (`.text.NAME`), one per data
object (`.data.NAME`, `.bss.NAME`, `.rodata.NAME`), the anonymous read-only data between objects (strings,
constants: compared by contents wherever they lie) in `.rodata.K` sections, relocations re-targeted from the linker's output
section symbols to these pieces, and relocation sites zeroed as in an object. The differ's passes then run
unchanged on two such models.

Jump tables get a `.rodata.K` piece each: a run of relocations from an address code references (the table's
start) up to the next such address. So a function carries its own tables only, not those of every function whose
tables lie in the same stretch of anonymous data, and an entry (`.long .Lcase - .Ltable`, a PC-relative field
whose addend carries its distance from the table's start) is re-targeted to the piece its case label lies in,
found once that distance is taken off (diffobj.targets resolves it the same way).

The linker's relaxations are undone where the patch code must not keep them: a GOT load it turned into
`lea sym(%rip)` or a GOT call into `call sym` is a plain PC-relative reference again.

The executable's unwind information becomes an object's `.eh_frame`: each modelled function's FDE and its CIE,
with pc_begin as a relocation, so that diffobj.ehframe keeps the records of
the included code as it does for objects and the loader registers them in the target (backtraces, thread
cancellation and exceptions through the new code).
"""
from __future__ import annotations

import bisect
import os
import struct
from typing import NamedTuple

from patch_build.common.errors import InputError
from patch_build.common.inputfile import read_input
from patch_build.diffobj.model import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_TLS,
    SHF_WRITE,
    SHN_ABS,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
    ObjectFile,
    Relocation,
    Section,
    Symbol,
)
from patch_build.diffobj.read import read_object
from patch_build.elfcore import x86_64 as arch
from patch_build.elfcore.constants import (
    ET_DYN,
    ET_EXEC,
    SHN_COMMON,
    SHT_RELA,
    SHT_SYMTAB,
    SHT_X86_64_UNWIND,
    STB_GLOBAL,
    STB_WEAK,
)
from patch_build.elfcore.ehframe import MalformedEhFrame, fdes
from patch_build.elfcore.headers import check_linked_header, elf_type, section_names
from patch_build.elfcore.read import MAX_OBJECT_SIZE, mark_aliases
from patch_build.elfcore.structs import RELA, SectionHeader, r_sym, r_type
from patch_build.elfcore.symbols import ElfSymbol, unpack_symbols

_PCREL_SDATA4 = 0x1B  # DW_EH_PE_pcrel | DW_EH_PE_sdata4: gcc's pointer encoding in x86-64 .eh_frame
# Output sections of the C runtime and the dynamic linker's tables: never patched, never compared.
_SKIPPED = (".init", ".fini", ".plt", ".plt.got", ".plt.sec", ".got", ".got.plt", ".dynamic", ".init_array",
            ".fini_array", ".eh_frame", ".eh_frame_hdr", ".gcc_except_table", ".interp", ".tm_clone_table")
_ST_TYPES = {STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_TLS}
_ST_BINDS = {STB_LOCAL, STB_GLOBAL, STB_WEAK}


class _OutSection(NamedTuple):
    """A section of the linked file."""
    name: str
    header: SectionHeader


class _Piece:
    """One model section cut out of an output section: [start, end) in the executable's addresses."""

    def __init__(self, section: Section, start: int, end: int, table: bool = False):
        self.section, self.start, self.end = section, start, end
        self.table = table  # a jump table: its PC-relative entries count from its start
        self.insns: arch.InstructionBounds | None = None  # instruction boundaries, decoded when first needed


def read_linked(path: str, blob: bytes | None = None) -> ObjectFile:
    """The model of the executable or shared library at `path` (its bytes `blob` when already read);
    InputError when it was not linked with --emit-relocs or cannot be read."""
    if blob is None:
        blob = read_input(path, "linked program", MAX_OBJECT_SIZE)
    headers = check_linked_header(path, blob)
    return _Model(path, blob, headers).build(path)


class _Model:
    def __init__(self, path: str, blob: bytes, headers: list[SectionHeader]):
        self.name = os.path.basename(path)
        self.blob = blob
        self.out_sections = [_OutSection(name, h) for name, h in zip(section_names(path, blob, headers), headers)]
        symtab = next((s.header for s in self.out_sections if s.name == ".symtab"), None)
        if symtab is None or symtab.type != SHT_SYMTAB:
            raise InputError(f"{self.name}: is stripped (no .symtab)")
        self.raw: list[ElfSymbol] = unpack_symbols(self._data(symtab), self._data(headers[symtab.link]))
        self.relas = {s.header.info: s for s in self.out_sections
                      if s.header.type == SHT_RELA and not s.header.flags & SHF_ALLOC}
        self._read_relas: dict[int, list[tuple[int, int, int, int]]] = {}
        self.sections: list[Section] = [Section(0, "", 0, 0, 0, 0, b"")]
        self.symbols: list[Symbol] = [Symbol(0, "", STT_NOTYPE, STB_LOCAL, 0, SHN_UNDEF, 0, 0)]
        self.pieces: dict[int, list[_Piece]] = {}  # output section index -> its pieces, by address
        self.starts: dict[int, list[int]] = {}  # output section index -> its pieces' start addresses
        self.externals: dict[str, Symbol] = {}
        self.defined: dict[int, list] = {}  # output section index -> the sized functions and objects in it
        for raw in self.raw:
            if raw.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON) and raw.size and raw.type in (STT_FUNC, STT_OBJECT):
                self.defined.setdefault(raw.shndx, []).append(raw)
        self.by_raw: dict[int, Symbol] = {}  # executable symbol index -> model symbol

    def _data(self, header: SectionHeader) -> bytes:
        """The contents of a section of the linked file (zeros for a NOBITS one)."""
        return bytes(header.size) if header.type == SHT_NOBITS else self.blob[header.offset:header.offset + header.size]

    def build(self, path: str) -> ObjectFile:
        code = [i for i, s in enumerate(self.out_sections) if self._wanted(s) and s.header.flags & SHF_EXECINSTR]
        if not any(i in self.relas for i in code):
            raise InputError(f"{self.name}: has no relocations for its code (link it with -Wl,--emit-relocs)")
        self.symbols.append(Symbol(1, "", STT_FILE, STB_LOCAL, 0, SHN_ABS, 0, 0))
        for i in code:  # first: where the code points in read-only data tells where its jump tables are
            self._cut(i, self.out_sections[i])
        tables = self._jump_tables()
        for i, sec in enumerate(self.out_sections):
            if self._wanted(sec) and i not in self.pieces:
                self._cut(i, sec, tables.get(i, []))
        self._place_symbols()
        for i in sorted(self.pieces):
            if i in self.relas:
                self._relocate(i)
        self._unwind()
        for sec in self.sections:
            sec.relocations.sort(key=lambda r: r.offset)
            mark_aliases(sec)
        return ObjectFile(path=path, sections=self.sections, symbols=self.symbols, source_file="")

    @staticmethod
    def _wanted(sec: _OutSection) -> bool:
        # TLS symbols hold offsets in the TLS block, not addresses: thread-local data is not modelled.
        h = sec.header
        return (h.type in (SHT_PROGBITS, SHT_NOBITS) and h.flags & SHF_ALLOC and not h.flags & SHF_TLS
                and sec.name not in _SKIPPED and not sec.name.startswith(".note"))

    def _relocations(self, index: int) -> list[tuple[int, int, int, int]]:
        """(offset, type, symbol index, addend) of each relocation of output section `index`, read once."""
        found = self._read_relas.get(index)
        if found is None:
            table = self._data(self.relas[index].header)
            found = self._read_relas[index] = [(where, r_type(info), r_sym(info), addend)
                                               for where, info, addend in RELA.iter_unpack(table)]
        return found

    def _jump_tables(self) -> dict[int, list[tuple[int, int]]]:
        """[start, end) of the jump tables in each read-only output section: a run of relocations of one type
        at an address code references, up to the next address code references there."""
        starts: dict[int, set[int]] = {}
        for i in self.pieces:
            for where, rtype, symidx, addend in self._relocations(i) if i in self.relas else ():
                piece, kind = self._piece_at(i, where), arch.RELOC_TYPES.get(rtype)
                raw = self.raw[symidx] if 0 < symidx < len(self.raw) else None
                if piece is None or kind is None or raw is None or raw.type != STT_SECTION \
                        or not 0 < raw.shndx < len(self.out_sections) or raw.shndx in self.pieces:
                    continue
                starts.setdefault(raw.shndx, set()).add(self._address(piece, where - piece.start, kind, raw.shndx,
                                                                      addend))
        tables: dict[int, list[tuple[int, int]]] = {}
        for index, found in sorted(starts.items()):
            sec = self.out_sections[index]
            if index not in self.relas or sec.header.flags & SHF_WRITE or not self._wanted(sec):
                continue
            types = {where: rtype for where, rtype, _, _ in self._relocations(index)}
            ordered = sorted(found)
            for start, limit in zip(ordered, ordered[1:] + [sec.header.addr + sec.header.size]):
                kind = arch.RELOC_TYPES.get(types.get(start, -1))
                end = start
                while kind is not None and end < limit and types.get(end) == kind.number:
                    end += kind.size
                if end > start:
                    tables.setdefault(index, []).append((start, end))
        return tables

    def _cut(self, index: int, sec: _OutSection, tables: list[tuple[int, int]] = ()) -> None:
        """Functions and data objects get a section each; in read-only data, what lies between objects (strings,
        constants: anonymous) goes into sections `NAME.K`, K counting such runs, each of the jump `tables` in
        such a run into one of its own."""
        h = sec.header
        data = self._data(h)
        base, end = h.addr, h.addr + h.size
        stype = h.type
        flags = h.flags & (SHF_ALLOC | SHF_WRITE | SHF_EXECINSTR)
        extents = sorted({(s.value, s.value + s.size, f"{sec.name}.{s.name.split('@')[0]}")
                          for s in self.defined.get(index, ()) if base <= s.value < end})
        extents = [e for i, e in enumerate(extents) if i == 0 or e[0] >= extents[i - 1][1]]  # aliases: one
        if not flags & (SHF_EXECINSTR | SHF_WRITE):
            gaps, at = [], base
            for start, stop, _ in extents + [(end, end, "")]:
                if start > at:
                    gaps += self._anonymous(sec.name, at, start, tables, len(gaps))
                at = max(at, stop)
            extents = sorted(extents + gaps)
        is_table = set(tables)
        pieces = []
        for start, end, piece_name in extents:
            s = Section(len(self.sections), piece_name, stype, flags, 16 if flags & SHF_EXECINSTR else 8, 0,
                        data[start - base:end - base])
            sym = Symbol(len(self.symbols), "", STT_SECTION, STB_LOCAL, 0, s.index, 0, 0, section=s)
            s.section_symbol = sym
            self.sections.append(s)
            self.symbols.append(sym)
            pieces.append(_Piece(s, start, end, (start, end) in is_table))
        self.pieces[index] = pieces
        self.starts[index] = [p.start for p in pieces]

    @staticmethod
    def _anonymous(name: str, lo: int, hi: int, tables: list[tuple[int, int]], k: int) -> list[tuple[int, int, str]]:
        """The pieces of the anonymous run [lo, hi): the jump tables in it and what lies between them, named
        `name.K` from K = `k` on."""
        cuts, at = [], lo
        for start, end in tables:
            if lo <= start and end <= hi:
                if start > at:
                    cuts.append((at, start))
                cuts.append((start, end))
                at = end
        if hi > at:
            cuts.append((at, hi))
        return [(start, end, f"{name}.{k + n}") for n, (start, end) in enumerate(cuts)]

    def _piece_at(self, index, address: int) -> _Piece | None:
        i = bisect.bisect_right(self.starts.get(index, ()), address) - 1
        if i < 0:
            return None
        piece = self.pieces[index][i]
        return piece if address < piece.end else None

    def _place_symbols(self) -> None:
        for i, raw in enumerate(self.raw):
            stype, bind = raw.type, raw.bind
            if stype not in _ST_TYPES or stype in (STT_SECTION, STT_FILE) or bind not in _ST_BINDS or not raw.name:
                continue
            name = raw.name.split("@")[0]  # ld writes versioned names (printf@GLIBC_2.2.5) into .symtab
            piece = self._piece_at(raw.shndx, raw.value)  # none for SHN_UNDEF and the other special indices
            if piece is None:
                if raw.shndx != SHN_UNDEF and not (stype == STT_NOTYPE and name.startswith(".L")):
                    continue  # defined outside what is modelled (C runtime, linker tables): referenced by name
                sym = Symbol(len(self.symbols), name, stype, bind, 0, SHN_UNDEF, 0, 0)
            else:
                sym = Symbol(len(self.symbols), name, stype, bind, 0, piece.section.index,
                             raw.value - piece.start, raw.size, section=piece.section)
                piece.section.symbols.append(sym)
            self.symbols.append(sym)
            self.by_raw[i] = sym
            if not sym.is_defined:
                self.externals.setdefault(name, sym)

    def _external(self, name: str) -> Symbol:
        """A reference to something not modelled (a C runtime or linker symbol, a linker table): by name, as an
        object would; the loader resolves it, or refuses the patch naming it."""
        sym = self.externals.get(name)
        if sym is None:
            sym = self.externals[name] = Symbol(len(self.symbols), name, STT_NOTYPE, 1, 0, SHN_UNDEF, 0, 0)
            self.symbols.append(sym)
        return sym

    def _relocate(self, index: int) -> None:
        zeroed: dict[Section, bytearray] = {}
        for where, rtype, symidx, addend in self._relocations(index):
            piece = self._piece_at(index, where)
            if piece is None:
                continue  # in padding, or in a piece not modelled
            sec, offset = piece.section, where - piece.start
            kind = arch.RELOC_TYPES.get(rtype)
            if kind is None:
                raise InputError(f"{self.name}: unsupported relocation type {rtype} at {where:#x}")
            if where + kind.size > piece.end or not 0 < symidx < len(self.raw):
                raise InputError(f"{self.name}: malformed relocation at {where:#x} in {self.relas[index].name}")
            if kind.relaxes_to is not None and offset >= 2 and (sec.data[offset - 2] == arch.LEA
                                                                or sec.data[offset - 1] in (arch.CALL_REL32,
                                                                                            arch.JMP_REL32)):
                rtype = kind.relaxes_to  # relaxed by the linker: a direct reference now
            symbol, addend = self._target(piece, offset, kind, symidx, addend)
            sec.relocations.append(Relocation(offset, rtype, symbol, addend))
            zeroed.setdefault(sec, bytearray(sec.data))[offset:offset + kind.size] = bytes(kind.size)
        for sec, data in zeroed.items():
            sec.data = bytes(data)

    def _target(self, piece: _Piece, offset: int, kind, index: int, addend: int) -> tuple[Symbol, int]:
        raw = self.raw[index]
        if raw.type != STT_SECTION:
            return self.by_raw.get(index) or self._external(raw.name.split("@")[0]), addend
        # An output section symbol: point at the piece the referenced address lies in instead.
        target_index = raw.shndx
        if not 0 < target_index < len(self.out_sections):
            raise InputError(f"{self.name}: section symbol {index} names no section")
        section_address = self.out_sections[target_index].header.addr
        address = self._address(piece, offset, kind, target_index, addend)
        target = self._piece_at(target_index, address)
        if target is None:  # in no function or object: no name the running program could give it
            name = self.out_sections[target_index].name
            return self._external(f"{name}+{address - section_address:#x}"), addend
        return target.section.section_symbol, section_address + addend - target.start

    def _address(self, piece: _Piece, offset: int, kind, target_index: int, addend: int) -> int:
        """The address a field at `offset` of `piece` references through output section `target_index`'s
        symbol: S + A, and for a PC-relative field in code the distance to the end of its instruction, in a
        jump table minus the distance from the table's start."""
        bias = 0
        if kind.pc_relative and piece.section.is_text:
            if piece.insns is None:
                piece.insns = arch.instruction_bounds(piece.section.data)
            bias = arch.pc_relative_bias(piece.insns, offset, kind.size)
        elif kind.pc_relative and piece.table:
            bias = -offset
        return self.out_sections[target_index].header.addr + addend + bias

    def _unwind(self) -> None:
        """An object-like `.eh_frame`: the FDE of each modelled function that starts one, with its CIE. A C++
        function with a personality routine or a catch table (LSDA) goes without: `.gcc_except_table` and the
        personality pointers are not modelled."""
        out = next((s.header for s in self.out_sections if s.name == ".eh_frame" and s.header.type == SHT_PROGBITS),
                   None)
        if out is None:
            return
        data, base = self._data(out), out.addr
        try:
            entries = fdes(data, base)
        except MalformedEhFrame:
            return  # unparseable: the patch goes without unwind information
        code = [i for i in self.pieces if self.out_sections[i].header.flags & SHF_EXECINSTR]
        cies: dict[int, int | None] = {}  # offset -> new offset (None: not copied)
        out_data, relocations = bytearray(), []
        for fde in entries:
            start = fde.header["initial_location"]
            piece = next((p for i in code if (p := self._piece_at(i, start)) is not None), None)
            if piece is None or piece.start != start:
                continue
            cie = fde.cie
            if cie.offset not in cies:
                cies[cie.offset] = self._copy_cie(cie, data, out_data)
            if cies[cie.offset] is None:
                continue
            at = len(out_data)
            record = bytearray(data[fde.offset:fde.offset + 4 + fde.header["length"]])
            struct.pack_into("<I", record, 4, at + 4 - cies[cie.offset])
            struct.pack_into("<i", record, 8, 0)
            out_data += record
            relocations.append(Relocation(at + 8, arch.R_X86_64_PC32, piece.section.section_symbol, 0))
        if not relocations:
            return
        sec = Section(len(self.sections), ".eh_frame", SHT_X86_64_UNWIND, SHF_ALLOC, 8, 0, bytes(out_data + bytes(4)),
                      relocations=relocations)
        sym = Symbol(len(self.symbols), "", STT_SECTION, STB_LOCAL, 0, sec.index, 0, 0, section=sec)
        sec.section_symbol = sym
        self.sections.append(sec)
        self.symbols.append(sym)

    @staticmethod
    def _copy_cie(cie, data: bytes, out: bytearray) -> int | None:
        """Append `cie` (pyelftools' CIE) to `out`: its new offset, or None when it is not one gcc writes for
        C-like code (code pointers pcrel sdata4; no personality routine nor catch tables, which are not modelled)."""
        augmentation = cie.header["augmentation"]
        if augmentation != b"zR" or cie.augmentation_dict.get("FDE_encoding") != _PCREL_SDATA4:
            return None
        at = len(out)
        out += data[cie.offset:cie.offset + 4 + cie.header["length"]]
        return at


def read_model(path: str) -> ObjectFile:
    """An object file, or a linked program (link-diff): the model the differ diffed, for those reading it
    again (reports)."""
    blob = read_input(path, "object file", MAX_OBJECT_SIZE)
    return read_linked(path, blob) if elf_type(blob) in (ET_EXEC, ET_DYN) else read_object(path, blob)
