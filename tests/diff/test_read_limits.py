"""The object reader: sections and symbols as readelf shows them, section counts past 65,280, NOBITS
contents; that reading an object does not import LIEF (its import alone cost more than a large diff), and that
the differ leaves debug information's relocations unread."""
from __future__ import annotations

import re
import struct
import subprocess
import sys
import tracemalloc

import pytest

from patch_build.common.errors import InputError
from patch_build.common.inputfile import read_input
from patch_build.diffobj.model import STB_GLOBAL, STB_LOCAL, STT_FUNC, STT_NOTYPE, Symbol
from patch_build.diffobj.read import read_object
from patch_build.elfcore.read import MAX_OBJECT_SIZE

SOURCE = "int zeroed[64]; int filled = 7; int use(int i) { return zeroed[i] + filled; }\n"


@pytest.fixture(scope="module")
def small_object(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    (d / "u.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-c", "u.c", "-o", "u.o"],
                   cwd=d, check=True)
    return d / "u.o"


def test_sections_and_symbols_as_readelf_shows_them(small_object):
    obj = read_object(str(small_object))
    rows = re.findall(r"^\s*\[\s*(\d+)\] (\S*)\s+([A-Z_]+)\s+[0-9a-f]+ ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) "
                      r".{3} +(\d+) +(\d+) +(\d+)$", _readelf("-SW", small_object), re.M)
    assert len(rows) == len(obj.sections) > 5
    types = {"NULL": 0, "PROGBITS": 1, "SYMTAB": 2, "STRTAB": 3, "RELA": 4, "NOBITS": 8, "GROUP": 17}
    for sec, (nr, name, stype, _, size, entsize, link, info, align) in zip(obj.sections, rows):
        assert (sec.index, sec.name, sec.type, sec.size, sec.entsize, sec.link, sec.info, sec.addralign) == \
               (int(nr), name, types.get(stype, -1), int(size, 16), int(entsize, 16), int(link), int(info), int(align))
    syms = re.findall(r"^\s*(\d+): ([0-9a-f]+) +(\d+) (\w+) +(\w+) +\w+ +(\w+) ?(.*)$",
                      _readelf("-sW", small_object), re.M)
    assert len(syms) == len(obj.symbols) > 5
    stt = {"NOTYPE": 0, "OBJECT": 1, "FUNC": 2, "SECTION": 3, "FILE": 4}
    stb = {"LOCAL": 0, "GLOBAL": 1, "WEAK": 2}
    shn = {"UND": 0, "ABS": 0xFFF1, "COM": 0xFFF2}
    for sym, (num, value, size, stype, bind, ndx, name) in zip(obj.symbols, syms):
        assert (sym.index, sym.value, sym.size, sym.type, sym.bind, sym.shndx) == \
               (int(num), int(value, 16), int(size), stt[stype], stb[bind], shn[ndx] if ndx in shn else int(ndx))
        if not sym.is_section:  # readelf names a section symbol after its section; its own name is empty
            assert sym.name == name
    assert obj.source_file == "u.c"
    use = next(s for s in obj.symbols if s.name == "use")
    assert use.section is obj.section_named(".text.use") and use in use.section.symbols
    assert [r.symbol.name for r in use.section.relocations] == ["zeroed", "filled"]


def test_reading_an_object_does_not_import_lief(small_object):
    code = f"import sys; from diffobj.read import read_object; read_object({str(small_object)!r}); " \
           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lief'))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def _readelf(option: str, path) -> str:
    return subprocess.run(["readelf", option, str(path)], capture_output=True, text=True, check=True).stdout


def test_nobits_sections_read_as_zeros(small_object):
    obj = read_object(str(small_object))
    bss = obj.section_named(".bss.zeroed")
    assert bss is not None and bss.is_nobits
    assert bss.data == bytes(64 * 4)
    assert obj.section_named(".data.filled").data == struct.pack("<i", 7)


def test_more_than_65280_sections_is_a_clear_error(small_object, tmp_path):
    # ELF moves a count of 65,280 or more into section 0's sh_size and sets e_shnum to 0 (LIEF then
    # returns no sections at all): the reader must say so instead of diffing an empty object.
    blob = bytearray(small_object.read_bytes())
    e_shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    struct.pack_into("<H", blob, 0x3C, 0)  # e_shnum
    struct.pack_into("<Q", blob, e_shoff + 0x20, 70000)  # sh_size of section 0
    big = tmp_path / "big.o"
    big.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="70000 sections.*more than 65,280"):
        read_object(str(big))
    r = subprocess.run(["patch-diff", str(big), str(small_object), "-o", str(tmp_path / "out.o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.o").exists()


def test_reading_allocates_the_file_not_the_limit(small_object):
    """The bound (1 GiB for objects) is checked, not allocated: reading a small object costs its size."""
    tracemalloc.start()
    try:
        data = read_input(small_object, "ELF object", MAX_OBJECT_SIZE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == small_object.read_bytes()
    assert peak < 64 * len(data) + (1 << 20), peak


def test_a_file_over_the_limit_is_refused_unread(small_object):
    with pytest.raises(InputError, match="too large"):
        read_input(small_object, "ELF object", small_object.stat().st_size - 1)
    assert read_input(small_object, "ELF object", small_object.stat().st_size) == small_object.read_bytes()


def test_named_symbols_leave_out_labels_and_follow_appends(small_object):
    obj = read_object(str(small_object))
    text = obj.section_named(".text.use")
    assert [s.name for s in text.named_symbols()] == ["use"]
    label = Symbol(len(obj.symbols), ".L5", STT_NOTYPE, STB_LOCAL, 0, text.index, 0, 0, text)
    named = Symbol(len(obj.symbols) + 1, "use2", STT_FUNC, STB_GLOBAL, 0, text.index, 0, 1, text)
    text.symbols += [label, named]
    assert [s.name for s in text.named_symbols()] == ["use", "use2"]


def test_the_differ_leaves_debug_relocations_unread(tmp_path):
    """Most of a -g object's relocations apply to its debug information, which the differ never compares:
    they stay unread (memory: issue 11), and the output is written all the same."""
    from patch_build.diffobj.diff import DiffOptions, diff_objects

    for stem, value in (("orig", 1), ("patched", 2)):
        (tmp_path / f"{stem}.c").write_text(
            "static const int table[4] = {1, 2, 3, 4};\n"
            f"int pick(int i) {{ return table[i & 3] + {value}; }}\nint other(int i) {{ return i * 3; }}\n")
        subprocess.run(["gcc", "-O2", "-g", "-ffunction-sections", "-c", f"{stem}.c", "-o", f"{stem}.o"], cwd=tmp_path, check=True)
    result = diff_objects(str(tmp_path / "orig.o"), str(tmp_path / "patched.o"), DiffOptions())
    result.write(str(tmp_path / "out.o"))
    assert [c.name for c in result.changed_functions] == ["pick"]
    for obj in (result.orig, result.patched):
        debug = [s for s in obj.sections if s.name.startswith(".debug_") and s._unread is not None]
        assert debug and all(not s.is_alloc for s in debug)
