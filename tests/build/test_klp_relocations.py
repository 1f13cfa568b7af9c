"""linker.kernel_klp on a module-shaped object: kernel-model code compiled by the real gcc, linked by `ld -r` as
the kernel's module link does, read back with readelf (independent of the code under test). The livepatch
core's view of the result is tests/kernel's (qemu)."""
from __future__ import annotations

import re
import subprocess

import pytest

from support import elfcheck

from patch_build.linker.kernel_klp import weaken_klp_symbols, write_klp_relocations

# Two references to symbols of the running kernel, as the differ names them (gas wants the commas quoted).
COUNTER, HELPER = ".klp.sym.vmlinux.hidden_counter,0", ".klp.sym.ext4.helper,1"
SOURCE = rf"""
extern int hidden_counter __asm__("\"{COUNTER}\"");
extern int helper(int) __asm__("\"{HELPER}\"");
extern int printk(const char *, ...);
static int calls;
int patched_fn(int x) {{ calls += x; printk("%d", hidden_counter); return helper(x) + hidden_counter; }}
int other_fn(void) {{ return helper(calls) + printk("x"); }}
"""
_SECTION = re.compile(r"^\s*\[\s*(\d+)\] (\S+)\s+(\w+)\s+([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)\s+(\w*)\s+"
                      r"(\d+)\s+(\d+)\s+(\d+)$", re.M)
_RELA_HEADER = re.compile(r"^Relocation section '([^']+)'")
_RELA_ROW = re.compile(r"^([0-9a-f]{16})\s+[0-9a-f]{16}\s+(R_X86_64_\w+)\s+[0-9a-f]{16}\s+(\S+)")


@pytest.fixture
def module(tmp_path):
    (tmp_path / "m.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-fno-pie", "-mcmodel=kernel", "-ffunction-sections", "-fdata-sections", "-c",
                    "m.c", "-o", "m.o"], cwd=tmp_path, check=True)
    subprocess.run(["ld", "-r", "-o", "m.ko", "m.o"], cwd=tmp_path, check=True)
    return tmp_path / "m.ko"


def sections(path) -> dict[str, dict]:
    """readelf -SW: name -> index, type, offset, size, entry size, flags, link, info, alignment."""
    out = subprocess.run(["readelf", "-SW", str(path)], check=True, capture_output=True, text=True).stdout
    return {m[2]: dict(index=int(m[1]), type=m[3], offset=int(m[5], 16), size=int(m[6], 16), entsize=int(m[7], 16),
                       flags=m[8], link=int(m[9]), info=int(m[10]), align=int(m[11]))
            for m in _SECTION.finditer(out)}


def relocations(path) -> dict[str, set[tuple[int, str, str]]]:
    """readelf -rW: relocation section -> (offset, type, symbol) of each entry."""
    out = subprocess.run(["readelf", "-rW", str(path)], check=True, capture_output=True, text=True).stdout
    found, current = {}, None
    for line in out.splitlines():
        if m := _RELA_HEADER.match(line):
            current = found.setdefault(m[1], set())
        elif (m := _RELA_ROW.match(line)) and current is not None:
            current.add((int(m[1], 16), m[2], m[3]))
    return found


def symbol_lines(path) -> str:
    return subprocess.run(["readelf", "-sW", str(path)], check=True, capture_output=True, text=True).stdout


def test_references_move_to_klp_relocation_sections(module):
    assert weaken_klp_symbols(module) == 2
    weak = {s.name: s for s in elfcheck.readelf_symbols(module)}
    assert (weak[COUNTER].bind, weak[COUNTER].ndx) == (weak[HELPER].bind, weak[HELPER].ndx) == ("WEAK", "UND")
    assert (weak["printk"].bind, weak["printk"].ndx) == ("GLOBAL", "UND")
    before_sections, before = sections(module), relocations(module)

    made = write_klp_relocations(module)

    assert made == [".klp.rela.ext4.text.patched_fn", ".klp.rela.vmlinux.text.patched_fn",
                    ".klp.rela.ext4.text.other_fn"]
    assert not elfcheck.readelf_problems(module)
    after_sections, after = sections(module), relocations(module)
    symtab = after_sections[".symtab"]["index"]
    for name in made:
        function = name.rsplit(".", 1)[1]
        target = after_sections[f".text.{function}"]["index"]
        h = after_sections[name]
        assert (h["type"], h["flags"], h["link"], h["info"], h["entsize"], h["align"], h["size"]) == \
            ("RELA", "AIo", symtab, target, 24, 8, 24 * len(after[name]))
    # Each reference to the running kernel moved to its object's section, every other entry stayed.
    for function in ("patched_fn", "other_fn"):
        rela = f".rela.text.{function}"
        moved = {n: after[n] for n in made if n.endswith(f".text.{function}")}
        assert after[rela] | set().union(*moved.values()) == before[rela]
        assert all(symbol not in (COUNTER, HELPER) for _, _, symbol in after[rela])
        for name, entries in moved.items():
            objname = name.split(".")[3]
            assert {symbol for _, _, symbol in entries} <= {COUNTER, HELPER}
            assert all(symbol.startswith(f".klp.sym.{objname}.") for _, _, symbol in entries)
    # The original sections keep their places; only the relocation sections shrank and the name table moved.
    for name, header in before_sections.items():
        if name.startswith(".rela.text.") or name == ".shstrtab":
            continue
        assert after_sections[name] == header, name
    for name in (COUNTER, HELPER):
        assert re.search(rf"GLOBAL DEFAULT OS \[0xff20\] {re.escape(name)}$", symbol_lines(module), re.M), name


def test_an_object_without_references_is_left_as_it_is(tmp_path):
    (tmp_path / "plain.c").write_text("int plain(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-O2", "-c", "plain.c", "-o", "plain.o"], cwd=tmp_path, check=True)
    blob = (tmp_path / "plain.o").read_bytes()
    assert weaken_klp_symbols(tmp_path / "plain.o") == 0
    assert write_klp_relocations(tmp_path / "plain.o") == []
    assert (tmp_path / "plain.o").read_bytes() == blob
