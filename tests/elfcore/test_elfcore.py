"""elfcore, each ELF concept checked against readelf on objects and binaries gcc and ld have just built:
headers and sections, symbols, relocations (and the x86-64 table's names, sizes and formulas, against what ld
wrote), notes, a linked binary's symbol tables and contents, `.eh_frame` records, FDEs and their rows, a linked
file's sections, dynamic entries and DWARF through `ElfFile`."""
from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from patch_build.common.errors import InputError
from patch_build.common.inputfile import open_input
from patch_build.elfcore import dwarf as dwarf_reading
from patch_build.elfcore import ehframe, notes, symbols, x86_64
from patch_build.elfcore.binary import read_binary
from patch_build.elfcore.constants import ET_DYN, ET_EXEC, SHN_ABS, SHN_COMMON, SHN_UNDEF
from patch_build.elfcore.elffile import ElfFile
from patch_build.elfcore.headers import check_header, check_linked_header
from patch_build.elfcore.read import read_object
from patch_build.elfcore.symbols import symbol_table, symbols_of

SOURCE = r"""
#include <stdio.h>
static int counter;
__thread int tls_var;
const char *greeting = "hello";
long table[4] = {1, 2, 3, 4};
static int bump(int x) { static int calls; calls++; return x + counter++; }
int compute(int x) { printf("%s %d\n", greeting, x); return bump(x) * 2 + (int)table[x & 3]; }
int main(int argc, char **argv) { (void)argv; return compute(argc) + tls_var; }
"""
LIBRARY = "int lib_value = 3;\nint lib_get(void) { return lib_value; }\n"


def readelf(*args) -> str:
    return subprocess.run(["readelf", "-W", *map(str, args)], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("elfcore")
    (d / "a.c").write_text(SOURCE)
    (d / "lib.c").write_text(LIBRARY)
    out = {"obj": d / "a.o", "exe": d / "a.out", "lib": d / "lib.so"}
    for cmd in (["gcc", "-O2", "-g", "-fPIC", "-ffunction-sections", "-fdata-sections", "-c", "a.c", "-o", "a.o"],
                ["gcc", "-Wl,--build-id", "-Wl,--emit-relocs", "a.o", "-o", "a.out"],
                ["gcc", "-O2", "-shared", "-fPIC", "-Wl,--build-id", "lib.c", "-o", "lib.so"]):
        subprocess.run(cmd, cwd=d, check=True)
    return out


_SECTION = re.compile(r"^\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) [0-9a-f]+\s+"
                      r"([A-Za-z]*)\s+\d", re.M)


def _sections(path: Path) -> list[dict]:
    """readelf -S: index, name, type, address, offset, size, flags of each section."""
    rows = []
    for m in re.finditer(_SECTION, readelf("-S", path)):
        rows.append({"index": int(m[1]), "name": m[2] if m[3] != "NULL" else "", "type": m[3],
                     "addr": int(m[4], 16), "offset": int(m[5], 16), "size": int(m[6], 16), "flags": m[7]})
    return rows


def test_headers_and_sections(built):
    theirs = _sections(built["obj"])
    blob = built["obj"].read_bytes()
    headers = check_header(str(built["obj"]), blob)
    assert [(h.offset, h.size) for h in headers] == [(s["offset"], s["size"]) for s in theirs]
    e_shoff = int.from_bytes(blob[0x28:0x30], "little")
    assert b"".join(h.pack() for h in headers) == blob[e_shoff:e_shoff + 64 * len(headers)]  # packed back whole
    obj = read_object(str(built["obj"]))
    assert [(s.index, s.name, s.size) for s in obj.sections] == [(s["index"], s["name"], s["size"]) for s in theirs]
    for ours, row in zip(obj.sections, theirs):
        assert ours.is_text == ("X" in row["flags"]) and ours.is_alloc == ("A" in row["flags"])
        assert ours.is_writable == ("W" in row["flags"]) and ours.is_strings == ("S" in row["flags"])
        assert ours.is_nobits == (row["type"] == "NOBITS")
        if not ours.is_nobits:
            assert ours.data == built["obj"].read_bytes()[row["offset"]:row["offset"] + row["size"]]


def test_header_refused(built, tmp_path):
    with pytest.raises(InputError, match=r"a.out: is (an executable|a shared object), not a relocatable object"):
        check_header(str(built["exe"]), built["exe"].read_bytes())
    blob = bytearray(built["obj"].read_bytes())
    blob[18] = 3  # e_machine EM_386
    with pytest.raises(InputError, match=r"unsupported machine \(e_machine 3\)"):
        check_header("a.o", bytes(blob))


_SYMBOL = re.compile(r"^\s*(\d+): ([0-9a-f]+)\s+(\d+|0x[0-9a-f]+) (\w+)\s+(\w+)\s+\w+\s+(\w+)\s?(.*)$", re.M)
_TYPES = {"NOTYPE": 0, "OBJECT": 1, "FUNC": 2, "SECTION": 3, "FILE": 4, "COMMON": 5, "TLS": 6, "IFUNC": 10}
_BINDS = {"LOCAL": 0, "GLOBAL": 1, "WEAK": 2, "UNIQUE": 10}
_NDX = {"UND": SHN_UNDEF, "ABS": SHN_ABS, "COM": SHN_COMMON}


def _symbols(text: str, versions_shown: bool = False) -> list[tuple]:
    """(name, value, size, type, bind, shndx) of each readelf -s line, in table order; readelf names a
    section symbol by its section, the table by nothing, and shows `.dynsym` names with their versions
    (`puts@GLIBC_2.2.5 (2)`), which `.symtab` names carry themselves."""
    def name(m) -> str:
        shown = m[7].split(" (")[0] if m[4] != "SECTION" else ""
        return shown.split("@")[0] if versions_shown else shown

    return [(name(m), int(m[2], 16), int(m[3], 0), _TYPES[m[4]], _BINDS[m[5]],
             _NDX[m[6]] if m[6] in _NDX else int(m[6])) for m in _SYMBOL.finditer(text)]


def test_symbols(built):
    obj = read_object(str(built["obj"]))
    theirs = _symbols(readelf("-s", built["obj"]))
    assert [(s.name, s.value, s.size, s.type, s.bind, s.shndx)
            for s in obj.symbols] == theirs
    for sym in obj.symbols:
        if sym.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON):
            assert sym.section is obj.sections[sym.shndx]
    assert {s.name for s in obj.functions()} >= {"compute", "main"}


def test_linked_symbol_tables(built):
    for path, table, option in ((built["exe"], ".symtab", "-s"), (built["lib"], ".dynsym", "--dyn-syms")):
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            ours = [(s.name, s.value, s.size, s.type, s.bind, s.shndx) for s in symbol_table(ELFFile(f), table)]
        text = readelf(option, path)
        if table == ".symtab":
            text = text[text.index("'.symtab'"):]
        assert ours == _symbols(text, versions_shown=table == ".dynsym")
    assert any(s[0] == "lib_get" for s in ours)


def test_got_slots(built):
    """The GOT slots the dynamic linker binds (what an IFUNC resolves through): readelf's GLOB_DAT and JUMP_SLOT
    dynamic relocations, the first of each name."""
    from elftools.elf.elffile import ELFFile

    expected: dict[str, int] = {}
    relocations = _relocations(built["exe"])
    for offset, rtype, name, _ in relocations[".dyn"] + relocations[".plt"]:
        if rtype in ("R_X86_64_GLOB_DAT", "R_X86_64_JUMP_SLOT"):
            expected.setdefault(name.split("@")[0], offset)
    assert "printf" in expected
    with open(built["exe"], "rb") as f:
        assert symbols.got_slots(ELFFile(f)) == expected


_RELA = re.compile(r"^([0-9a-f]{16})\s+[0-9a-f]{16} (R_X86_64_\w+)\s+[0-9a-f]{16} (\S+) ([+-]) ([0-9a-f]+)$", re.M)


def _relocations(path: Path) -> dict[str, list[tuple]]:
    """readelf -r: (offset, type name, symbol, addend) of each relocation, by the section it applies to."""
    out, text = {}, readelf("-r", path)
    for block in text.split("Relocation section '")[1:]:
        name = block.split("'", 1)[0].removeprefix(".rela")
        out[name] = [(int(m[1], 16), m[2], m[3], int(m[5], 16) * (-1 if m[4] == "-" else 1))
                     for m in _RELA.finditer(block)]
    return out


def test_relocations_and_their_types(built):
    obj = read_object(str(built["obj"]))
    theirs = _relocations(built["obj"])
    ours = {s.name: [(r.offset, x86_64.reloc_type(r.type).name, r.symbol.display, r.addend) for r in s.relocations]
            for s in obj.sections if s.relocations}
    assert ours == theirs
    names = {r[1] for rels in theirs.values() for r in rels}
    assert {"R_X86_64_PC32", "R_X86_64_PLT32", "R_X86_64_64", "R_X86_64_TLSGD"} <= names


def test_formulas_against_ld(built):
    """ld kept the relocations it applied (--emit-relocs): each field it wrote is the table's formula of the
    symbol's final address, encoded in the table's size; a GOT load ld relaxed is a direct reference now."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    binary = read_binary(built["exe"])
    checked = set()
    with open(built["exe"], "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or not sec.name.startswith(".rela.text"):
                continue
            target = elf.get_section(sec["sh_info"])
            for rel in sec.iter_relocations():
                rtype = x86_64.reloc_type(rel["r_info_type"])
                sym = symtab.get_symbol(rel["r_info_sym"])
                if rtype.is_tls or sym["st_shndx"] == "SHN_UNDEF" or rtype.got:
                    continue  # resolved through the PLT, the GOT or the TLS block: not S itself
                place = rel["r_offset"]
                assert target["sh_addr"] <= place < target["sh_addr"] + target["sh_size"]
                value = rtype.value(S=sym["st_value"], A=rel["r_addend"], P=place, Z=sym["st_size"])
                assert binary.read(place, rtype.size) == rtype.encode(value), (sec.name, hex(place), rtype.name)
                checked.add(rtype.name)
    assert {"R_X86_64_PC32", "R_X86_64_PLT32"} <= checked


def test_table_rows():
    pc32 = x86_64.reloc_type(x86_64.R_X86_64_PC32)
    assert pc32.value(S=0x2000, A=-4, P=0x1000) == 0xFFC and pc32.encode(-4) == bytes.fromhex("fcffffff")
    with pytest.raises(ValueError, match="does not fit in 32 bits"):
        pc32.encode(1 << 31)
    with pytest.raises(x86_64.UnsupportedRelocation, match="thread-local"):
        x86_64.reloc_type(x86_64.R_X86_64_TPOFF32).value(S=0, A=0)
    with pytest.raises(x86_64.UnsupportedRelocation):
        x86_64.reloc_type(200)
    rex = x86_64.reloc_type(x86_64.R_X86_64_REX_GOTPCRELX)
    assert rex.relaxed == (3, 0) and rex.relaxes_to == x86_64.R_X86_64_PC32 and rex.display_suffix == "@REX_GOTPCRELX"
    assert rex.value(S=0, A=-4, P=0x1000, G=8, GOT=0x3000) == 0x2004
    assert x86_64.reloc_type(x86_64.R_X86_64_32).fits(0xFFFFFFFF) and not x86_64.reloc_type(x86_64.R_X86_64_32S).fits(
        0xFFFFFFFF)


def test_build_id(built):
    for path in (built["exe"], built["lib"]):
        expected = re.search(r"Build ID: ([0-9a-f]+)", readelf("-n", path))[1]
        assert notes.build_id_of(path) == expected
    assert notes.build_id_of(built["obj"]) is None


def test_linked_binary(built):
    binary = read_binary(built["exe"])
    assert binary.e_type in (ET_EXEC, ET_DYN) and binary.build_id == notes.build_id_of(built["exe"])
    blob = built["exe"].read_bytes()
    for row in _sections(built["exe"]):
        if row["addr"] and row["size"] and row["type"] != "NOBITS":
            assert binary.section_name(row["addr"]) == row["name"]
            assert binary.section_name(row["addr"] + row["size"] - 1) == row["name"]
            assert binary.read(row["addr"], row["size"]) == blob[row["offset"]:row["offset"] + row["size"]]
        if row["name"] == ".bss":
            assert binary.read(row["addr"], row["size"]) == bytes(row["size"])  # .bss reads as zeros
    assert binary.read(1 << 40, 4) == b"" and binary.section_name(1 << 40) == ""


_FRAME = re.compile(r"^([0-9a-f]{8}) ([0-9a-f]{16}) [0-9a-f]{8} "
                    r"(CIE|FDE cie=([0-9a-f]{8}) pc=([0-9a-f]+)\.\.([0-9a-f]+))", re.M)


def _frames(path: Path) -> list[tuple]:
    """readelf --debug-dump=frames: (offset, size, cie offset or -1, pc_begin, pc_end) of each record."""
    text = readelf("--debug-dump=frames", path)
    text = text[text.index("Contents of the .eh_frame section"):]
    return [(int(m[1], 16), int(m[2], 16) + 4, int(m[4], 16) if m[4] else -1,
             int(m[5], 16) if m[5] else None, int(m[6], 16) if m[6] else None) for m in _FRAME.finditer(text)]


def test_eh_frame_records(built):
    obj = read_object(str(built["obj"]))
    sec = obj.section_named(ehframe.EH_FRAME)
    found = ehframe.records(sec.data)
    assert [(r.offset, r.size, r.cie) for r in found] == [f[:3] for f in _frames(built["obj"])]
    by_record = ehframe.relocations_by_record(found, sec.relocations)
    described = {ehframe.pc_begin(r, by_record[r.offset]).symbol.display for r in found if not r.is_cie}
    assert {".text.compute", ".text.startup.main"} <= described

    fde = next(r for r in found if not r.is_cie)
    data, relocations, kept = ehframe.keep_fdes(sec.data, found, by_record, {fde.offset})
    assert [(r.cie < 0) for r in kept] == [True, False] and data.endswith(ehframe.TERMINATOR)
    assert [(r.offset, r.size, r.cie) for r in ehframe.records(data)] == [(0, kept[0].size, -1),
                                                                         (kept[0].size, fde.size, 0)]
    assert [r.offset for r in relocations] == [kept[0].size + ehframe.PC_BEGIN]


def test_eh_frame_of_a_binary(built):
    """A linked `.eh_frame` (crt objects' CIEs, a terminator at the end): every record, and each FDE decoded
    alone from the `.eh_frame_hdr` search table covers what readelf says."""
    binary = read_binary(built["exe"])
    sections = {s["name"]: s for s in _sections(built["exe"])}
    eh, hdr = sections[".eh_frame"], sections[".eh_frame_hdr"]
    data = binary.read(eh["addr"], eh["size"])
    theirs = _frames(built["exe"])
    assert [(r.offset, r.size, r.cie) for r in ehframe.records(data)] == [f[:3] for f in theirs]
    table = ehframe.search_table(hdr["addr"], binary.read(hdr["addr"], hdr["size"]), eh["addr"])
    fdes = {f[0]: (f[3], f[4]) for f in theirs if f[2] >= 0}
    assert sorted(off for _, off in table) == sorted(fdes)
    for start, off in table:
        fde = ehframe.decode_fde(data, eh["addr"], off)
        begin = fde.header["initial_location"]
        assert (start, (begin, begin + fde.header["address_range"])) == (fdes[off][0], fdes[off])
    assert ehframe.decode_fde(data, eh["addr"], 0) is None  # a CIE
    assert sorted((f.header["initial_location"], f.offset) for f in ehframe.fdes(data, eh["addr"])) == \
        sorted((pc, off) for off, (pc, _) in fdes.items())


def test_eh_frame_malformed(built):
    sec = read_object(str(built["obj"])).section_named(ehframe.EH_FRAME)
    with pytest.raises(ehframe.MalformedEhFrame, match="bad record length at offset 0x0"):
        ehframe.records(b"\xff\x00\x00\x00" + sec.data[4:])
    fde = next(r for r in ehframe.records(sec.data) if not r.is_cie)
    with pytest.raises(ehframe.MalformedEhFrame, match="the FDE at offset 0x0 points to no CIE"):
        ehframe.records(sec.data[fde.offset:])  # its CIE pointer leads before the start
    inside = ehframe.TERMINATOR + sec.data  # a terminator ld -r left inside is stepped over
    assert [r.size for r in ehframe.records(inside)] == [r.size for r in ehframe.records(sec.data)]


def test_elf_file(built):
    """elfcore's door to a linked file: sections by name (NOBITS ones have no contents), build-id, symbol
    tables, program interpreter and needed libraries, against readelf."""
    blob = built["exe"].read_bytes()
    with ElfFile(built["exe"]) as elf:
        for row in _sections(built["exe"]):
            if row["name"] and row["type"] != "NOBITS":
                assert elf.section_data(row["name"]) == (row["addr"], blob[row["offset"]:row["offset"] + row["size"]])
            elif row["type"] == "NOBITS":
                assert elf.section_data(row["name"]) is None
        assert elf.section_data(".no-such-section") is None
        assert elf.build_id() == notes.build_id_of(built["exe"])
        assert elf.symbols(".symtab") == symbols_of(built["exe"])
        assert elf.interpreted() == ("Requesting program interpreter" in readelf("-l", built["exe"]))
        assert elf.needed() == re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", readelf("-d", built["exe"]))
        assert "libc.so.6" in elf.needed()
    with ElfFile(built["lib"]) as lib:
        assert not lib.interpreted() and lib.dwarf() is None  # built without -g


def test_elf_file_refused(built, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not ELF at all\n" * 10)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(built["exe"].read_bytes()[:20])
    for path in (text, truncated):
        with pytest.raises(InputError, match=rf"^{path.name}: not a readable ELF file"):
            ElfFile(path)


def test_dwarf_of_a_linked_file(built):
    """A global's DW_OP_addr location (through elfcore's expression parser) is its symbol's address, and its
    type's encoding is named."""
    addresses = {s.name: s.value for s in symbols_of(built["exe"]) if s.type == 1}  # STT_OBJECT
    found = {}
    with ElfFile(built["exe"]) as elf:
        dwarf = elf.dwarf()
        for cu in dwarf.iter_CUs():
            parser = dwarf_reading.expression_parser(cu)
            for die in cu.get_top_DIE().iter_children():
                name = die.attributes.get("DW_AT_name")
                if die.tag == "DW_TAG_variable" and name is not None and "DW_AT_location" in die.attributes:
                    ops = parser.parse_expr(die.attributes["DW_AT_location"].value)
                    if ops[0].op_name == "DW_OP_addr":
                        found[name.value.decode()] = ops[0].args[0]
                if die.tag == "DW_TAG_base_type" and name is not None and name.value == b"int":
                    encoding = dwarf_reading.base_type_encodings()[die.attributes["DW_AT_encoding"].value]
    assert found == {name: addresses[name] for name in ("counter", "greeting", "table")}
    assert encoding == "DW_ATE_signed"


def test_linked_header(built):
    blob = built["exe"].read_bytes()
    headers = check_linked_header(str(built["exe"]), blob)
    assert [(h.addr, h.offset, h.size) for h in headers] == [(s["addr"], s["offset"], s["size"])
                                                             for s in _sections(built["exe"])]
    with pytest.raises(InputError, match=r"^a.o: not an x86-64 executable or shared library$"):
        check_linked_header(str(built["obj"]), built["obj"].read_bytes())


_REGISTERS = {"rax": 0, "rdx": 1, "rcx": 2, "rbx": 3, "rsi": 4, "rdi": 5, "rbp": 6, "rsp": 7,
              **{f"r{n}": n for n in range(8, 16)}}


def _frame_rows(path: Path) -> dict[int, list[tuple]]:
    """readelf --debug-dump=frames-interp: FDE offset -> (LOC, CFA, {column: rule}) of each row it shows."""
    text = readelf("--debug-dump=frames-interp", path)
    out = {}
    for block in text.split("\n\n"):
        head = _FRAME.search(block)
        if head is None or head[3] == "CIE" or "LOC" not in block:
            continue
        lines = block.strip().splitlines()
        columns = lines[1].split()[2:]
        out[int(head[1], 16)] = [(int(row.split()[0], 16), row.split()[1], dict(zip(columns, row.split()[2:])))
                                 for row in lines[2:]]
    return out


def test_frame_table(built):
    """The rows of each FDE of a binary, as readelf interprets them: CFA register and offset (or an
    expression), and each register's rule (c-N: saved at CFA-N; u: none)."""
    binary = read_binary(built["exe"])
    address, size = binary.section(ehframe.EH_FRAME)
    data = binary.read(address, size)
    theirs = _frame_rows(built["exe"])
    assert len(theirs) >= 3
    for offset, rows in theirs.items():
        table = ehframe.frame_table(data, address, offset)
        assert [row.pc for row in table.rows] == [loc for loc, _, _ in rows]
        for ours, (_, cfa, rules) in zip(table.rows, rows):
            reg, _, off = cfa.partition("+")
            assert ours.cfa == (None if cfa == "exp" else (_REGISTERS[reg], int(off)))
            for column, rule in rules.items():
                mine = ours.rules.get(table.return_address if column == "ra" else _REGISTERS[column])
                if rule == "u":
                    assert mine is None or mine.kind == ehframe.UNDEFINED
                else:
                    assert rule.startswith("c") and mine == ehframe.Rule(ehframe.OFFSET, int(rule[1:]))
    assert ehframe.frame_table(data, address, 0) is None  # a CIE
    with pytest.raises(ehframe.MalformedEhFrame, match="undecodable FDE at offset"):
        ehframe.frame_table(data[:next(iter(theirs)) + 8], address, next(iter(theirs)))


def test_rule_names_are_pyelftools():
    from elftools.dwarf.callframe import RegisterRule

    assert (ehframe.UNDEFINED, ehframe.OFFSET) == (RegisterRule.UNDEFINED, RegisterRule.OFFSET)


def _rela_entry(blob: bytes, section: str) -> int:
    """The file offset of the first entry of relocation section `section`."""
    row = next(r for r in _sections_of(blob) if r[0] == section)
    return row[1]


def _sections_of(blob: bytes) -> list[tuple[str, int]]:
    from patch_build.elfcore.headers import section_names

    headers = check_header("a.o", blob)
    return [(name, h.offset) for name, h in zip(section_names("a.o", blob, headers), headers)]


def test_relocations_of_unloaded_sections_are_read_when_asked_for(built):
    """Debug information's relocations (most of an object's) are decoded when first asked for, not when the
    object is read; those of loaded sections at once."""
    obj = read_object(str(built["obj"]))
    debug, text = obj.section_named(".debug_info"), obj.section_named(".text.compute")
    assert debug._unread is not None and text._unread is None  # (the model's own bookkeeping)
    assert len(debug.relocations) == len(_relocations(built["obj"])[".debug_info"]) and debug._unread is None


def test_a_bad_relocation_of_an_unloaded_section_is_an_error_when_read(built):
    blob = bytearray(built["obj"].read_bytes())
    at = _rela_entry(bytes(blob), ".rela.debug_info")
    struct.pack_into("<I", blob, at + 8, 200)  # r_info's type
    obj = read_object("a.o", bytes(blob))
    with pytest.raises(InputError, match=r"^a.o: unsupported relocation type 200 in .rela.debug_info$"):
        obj.section_named(".debug_info").relocations
    at = _rela_entry(bytes(blob), ".rela.text.compute")
    struct.pack_into("<I", blob, at + 8, 200)
    with pytest.raises(InputError, match=r"^a.o: unsupported relocation type 200 in .rela.text.compute$"):
        read_object("a.o", bytes(blob))


def test_assigned_relocations_replace_unread_ones(built):
    obj = read_object(str(built["obj"]))
    debug = obj.section_named(".debug_info")
    debug.relocations = []
    assert debug.relocations == [] and debug._unread is None


def test_contents_of_unloaded_sections_are_read_when_asked_for(built):
    """Debug information (four fifths of a kernel unit) is not read with the object: its size is known, its bytes
    are read from the file when first asked for; loaded sections, their relocations and the symbol table at once."""
    obj = read_object(str(built["obj"]))
    rows = {r["name"]: r for r in _sections(built["obj"])}
    debug, text = obj.section_named(".debug_info"), obj.section_named(".text.compute")
    assert debug._unread_data is not None and text._unread_data is None  # (the model's own bookkeeping)
    assert debug.size == rows[".debug_info"]["size"] and debug._unread_data is not None
    blob = built["obj"].read_bytes()
    for sec in (debug, text):
        row = rows[sec.name]
        assert sec.data == blob[row["offset"]:row["offset"] + row["size"]]
    assert debug._unread_data is None


@pytest.mark.parametrize("change", ["truncated", "rewritten", "replaced"])
def test_unread_contents_of_a_changed_file_are_refused(built, tmp_path, change):
    """A file changed after it was read (a build rewriting it meanwhile) is not read from again: one-line
    InputError naming it, whether it is shorter now (a mapping of it would have died of SIGBUS), rewritten in
    place with other bytes of the same size, or replaced by another file."""
    path = tmp_path / "a.o"
    path.write_bytes(built["obj"].read_bytes())
    obj = read_object(str(path))
    blob = path.read_bytes()
    if change == "truncated":
        os.truncate(path, len(blob) // 2)
    elif change == "rewritten":
        with open(path, "r+b") as f:
            f.write(blob[:-1] + bytes([blob[-1] ^ 1]))
        os.utime(path, ns=(1, 1))  # a new modification time even on a file system with coarse timestamps
    else:
        (tmp_path / "b.o").write_bytes(blob)
        os.replace(tmp_path / "b.o", path)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: changed while it was being read \("):
        obj.section_named(".debug_info").data
    assert obj.section_named(".text.compute").data  # read with the object, kept as it was


def test_a_file_shorter_than_its_headers_while_read_is_refused(built, tmp_path):
    """Read a part at a time, a file truncated while open gives a short read: an InputError, not short data."""
    path = tmp_path / "a.o"
    path.write_bytes(built["obj"].read_bytes())
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: changed while it was being read"):
        with open_input(path, "ELF object", 1 << 30) as (parts, _):
            assert parts[:4] == b"\x7fELF" and len(parts) == path.stat().st_size
            os.truncate(path, 100)
            parts[50:200]
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: changed while it was being read"):
        with open_input(path, "ELF object", 1 << 30) as (parts, _):
            path.write_bytes(built["obj"].read_bytes())  # grown again while open: found when it is closed
