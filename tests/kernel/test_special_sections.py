"""The kernel special-sections pass on real units (fs/proc/meminfo.c, fs/read_write.c), built by patch-build
(-d keeps the original and patched objects), diffed again here, the output checked entry by entry.

objtool's tables (.return_sites, .retpoline_sites, .orc_unwind_ip/.orc_unwind) are in each unit on 6.1; a
kernel with IBT (Debian's 6.12) runs objtool on vmlinux.o at the link instead, so its units have none (and
objtool makes them for the livepatch module when kbuild links it)."""
from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from patch_build.diffobj.diff import DiffOptions, diff_objects

OBJTOOL_TABLES = {".return_sites", ".retpoline_sites", ".orc_unwind_ip", ".orc_unwind"}


def _objtool_at_link(kenv) -> bool:
    """objtool runs on vmlinux.o, not per unit (scripts/Makefile.lib's delay-objtool: IBT or clang LTO)."""
    return "\nCONFIG_X86_KERNEL_IBT=y\n" in kenv.config.read_text()


def _tables(kenv, before, tables):
    """The tables the unit must have on this kernel: objtool's only when objtool ran on the unit."""
    if _objtool_at_link(kenv):
        assert not OBJTOOL_TABLES & set(before), sorted(OBJTOOL_TABLES & set(before))
        return [t for t in tables if t[0] not in OBJTOOL_TABLES]
    return tables

pytestmark = [pytest.mark.kernel]


def _sections(path: Path) -> dict[str, tuple[bytes, list[tuple[int, str, int]]]]:
    """{name: (data, [(offset, target, addend)])}: the target is a section for anonymous data (section symbols,
    .L labels; the addend then counts from the section's start), else the symbol's name."""
    out = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if sec["sh_type"] in ("SHT_RELA", "SHT_SYMTAB", "SHT_STRTAB", "SHT_NULL"):
                continue
            rels = []
            rela = elf.get_section_by_name(".rela" + sec.name)
            for r in rela.iter_relocations() if rela is not None else []:
                sym = symtab.get_symbol(r["r_info_sym"])
                if sym["st_info"]["type"] == "STT_SECTION" or sym.name.startswith(".L"):  # anonymous: by section
                    rels.append((r["r_offset"], elf.get_section(sym["st_shndx"]).name, r["r_addend"] + sym["st_value"]))
                else:
                    rels.append((r["r_offset"], sym.name, r["r_addend"]))
            out[sec.name] = (sec.data(), sorted(rels))
    return out


def _objects(patch_build, out: Path, patch: str, unit: str) -> tuple[Path, Path]:
    built = patch_build(patch, out, "-d")
    assert built.ok, built.stderr
    scratch = Path(re.search(r"scratch tree kept: (\S+)", built.stderr).group(1))
    orig, patched = out / "orig.o", out / "patched.o"
    shutil.copy(next((scratch / "orig").glob(f"*{unit}")), orig)
    shutil.copy(next((scratch / "patched").glob(f"*{unit}")), patched)
    shutil.rmtree(scratch)
    return orig, patched


@pytest.fixture(scope="module")
def meminfo_objects(patch_build, tmp_path_factory):
    return _objects(patch_build, tmp_path_factory.mktemp("special"), "meminfo-string.patch", "meminfo.o")


@pytest.fixture(scope="module")
def read_write_objects(patch_build, tmp_path_factory):
    return _objects(patch_build, tmp_path_factory.mktemp("special"), "vfs-read-special.patch", "read_write.o")


def test_only_entries_of_the_included_function(kenv, meminfo_objects, kernel_struct_sizes, tmp_path):
    orig, patched = meminfo_objects
    result = diff_objects(str(orig), str(patched), DiffOptions(kernel=True, objname="vmlinux",
                                                               struct_sizes=kernel_struct_sizes))
    assert [c.name for c in result.changed_functions] == ["meminfo_proc_show"] and not result.errors
    result.write(str(tmp_path / "out.o"))
    before, after = _sections(patched), _sections(tmp_path / "out.o")

    # Every kept entry of every anchored table points into the included function, and all of them are kept.
    alt_size = kernel_struct_sizes.sizes["alt_instr"]
    tables = [("__mcount_loc", 8, True), (".return_sites", 4, True), (".orc_unwind_ip", 4, True),
              (".altinstructions", alt_size, False)]
    for name, size, others in _tables(kenv, before, tables):
        anchors = [(o, t) for o, t, _ in before[name][1] if o % size == 0]
        wanted = [t for _, t in anchors if t == ".text.meminfo_proc_show"]
        assert wanted, name
        if others:  # the unit has entries for its other functions too: they must go
            assert len(wanted) < len(anchors), name
        kept = [(o, t) for o, t, _ in after[name][1] if o % size == 0]
        assert [t for _, t in kept] == wanted, name
        assert len(after[name][0]) == len(wanted) * size, name

    # .orc_unwind goes with .orc_unwind_ip, entry for entry (6-byte orc_entry each).
    if ".orc_unwind_ip" in before:
        ip_rels = [(o, a) for o, t, a in before[".orc_unwind_ip"][1]]
        old_entries = {a: before[".orc_unwind"][0][o // 4 * 6:o // 4 * 6 + 6]
                       for (o, a), (_, t, _) in zip(ip_rels, before[".orc_unwind_ip"][1])
                       if t == ".text.meminfo_proc_show"}
        new_entries = {a: after[".orc_unwind"][0][o // 4 * 6:o // 4 * 6 + 6] for o, _, a in after[".orc_unwind_ip"][1]}
        assert new_entries == old_entries
    else:
        assert _objtool_at_link(kenv)

    # Each kept alternative names the replacement bytes it had, now in the cut-down .altinstr_replacement.
    def replacements(secs):
        """[(function offset the alternative patches, replacement bytes)] of the included function."""
        data, rels = secs[".altinstructions"]
        repl = secs[".altinstr_replacement"][0]
        at = {o: (t, a) for o, t, a in rels}
        out = []
        for entry in range(0, len(data), alt_size):
            (func, where), (_, start) = at[entry], at[entry + 4]
            if func == ".text.meminfo_proc_show":
                out.append((where, repl[start:start + data[entry + alt_size - 1]]))  # u8 replacementlen, last
        return out

    assert replacements(after) == replacements(before) != []
    assert len(after[".altinstr_replacement"][0]) == sum(len(r) for _, r in replacements(after))

    # The fentry call's site stays recorded: the one __mcount_loc entry is the call (after CALL_PADDING's
    # 16 bytes and IBT's endbr64 on 6.12, at the start of the section on 6.1).
    [fentry] = [o for o, t, _ in after[".text.meminfo_proc_show"][1] if t == "__fentry__"]
    assert after["__mcount_loc"][1] == [(0, ".text.meminfo_proc_show", fentry - 1)]
    assert struct.unpack("<Q", after["__mcount_loc"][0])[0] == 0


def test_bug_table_and_retpoline_sites(kenv, read_write_objects, kernel_struct_sizes, tmp_path):
    orig, patched = read_write_objects
    result = diff_objects(str(orig), str(patched), DiffOptions(kernel=True, objname="vmlinux",
                                                               struct_sizes=kernel_struct_sizes))
    assert [c.name for c in result.changed_functions] == ["vfs_read"] and not result.errors
    result.write(str(tmp_path / "out.o"))
    before, after = _sections(patched), _sections(tmp_path / "out.o")
    tables = [("__bug_table", kernel_struct_sizes.sizes["bug_entry"]), (".retpoline_sites", 4), (".return_sites", 4)]
    for name, size in _tables(kenv, before, tables):
        anchors = [t for o, t, _ in before[name][1] if o % size == 0]
        wanted = [t for t in anchors if t == ".text.vfs_read"]
        assert wanted and len(wanted) < len(anchors), name
        assert [t for o, t, _ in after[name][1] if o % size == 0] == wanted, name
    # The BUG entry's file name is a string literal the patch must carry: it reads "fs/read_write.c".
    [(_, target, addend)] = [r for r in after["__bug_table"][1] if r[0] == 4]
    data = after[target][0]
    assert data[addend:data.index(b"\0", addend)] == b"fs/read_write.c"
    # 6.12: access_ok()'s runtime constant USER_PTR_MAX is read from the variable in the patch's copy, not
    # left as the placeholder only vmlinux's boot code fills in.
    if "runtime_ptr_USER_PTR_MAX" in before:
        assert "USER_PTR_MAX" in {t for _, t, _ in after[".text.vfs_read"][1]}
        assert (0x0123456789abcdef).to_bytes(8, "little") not in after[".text.vfs_read"][0]
    else:
        assert kenv.line == "6.1"
