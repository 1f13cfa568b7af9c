"""Kernel runtime constants (6.11+): a patched function's `movabs $placeholder, %reg` of runtime_const_ptr(SYM),
which only vmlinux's boot code fills in, becomes a load of SYM in the patch (what a module compiles to); a
runtime_const_shift_right_32 is refused. The unit below uses the kernel's macros (asm/runtime-const.h)."""
from __future__ import annotations

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from patch_build.diffobj.diff import DiffOptions, diff_objects
from support import toolchain

SOURCE = r"""
#define runtime_const_ptr(sym) ({					\
	typeof(sym) __ret;						\
	asm("mov %1,%0\n1:\n"						\
	    ".pushsection runtime_ptr_" #sym ",\"a\"\n\t"		\
	    ".long 1b - %c2 - .\n"					\
	    ".popsection"						\
	    :"=r" (__ret)						\
	    :"i" ((unsigned long)0x0123456789abcdefull),		\
	     "i" (sizeof(long)));					\
	__ret; })
#define runtime_const_shift_right_32(val, sym) ({			\
	typeof(0u+(val)) __ret = (val);					\
	asm("shrl $12,%k0\n1:\n"					\
	    ".pushsection runtime_shift_" #sym ",\"a\"\n\t"		\
	    ".long 1b - 1 - .\n"					\
	    ".popsection"						\
	    :"+r" (__ret));						\
	__ret; })
extern unsigned long USER_PTR_MAX;
extern unsigned int d_hash_shift;

int in_range(unsigned long addr, unsigned long size)
{
	return addr + size <= runtime_const_ptr(USER_PTR_MAX) + RESULT;
}

unsigned int bucket(unsigned int hash)
{
	return runtime_const_shift_right_32(hash, d_hash_shift) + SHIFTED;
}
"""
CFLAGS = ["-O2", "-pg", "-mfentry", "-mrecord-mcount", "-mcmodel=kernel", "-fno-PIE", "-fno-asynchronous-unwind-tables"]


def _objects(tmp_path, **values):
    built = []
    for stem, (result, shifted) in (("orig", (0, 0)), ("patched", (values.get("RESULT", 0), values.get("SHIFTED", 0)))):
        (tmp_path / stem).mkdir()
        (tmp_path / stem / "unit.c").write_text(SOURCE.replace("RESULT", str(result)).replace("SHIFTED", str(shifted)))
        built.append(toolchain.compile_object("unit.c", tmp_path / f"{stem}.o", CFLAGS, tmp_path / stem))
    return built


def test_pointer_constant_is_loaded_from_its_variable(tmp_path):
    orig, patched = _objects(tmp_path, RESULT=1)
    options = DiffOptions(kernel=True, objname="vmlinux", exported={"USER_PTR_MAX"})
    result = diff_objects(str(orig), str(patched), options)
    assert [c.name for c in result.changed_functions] == ["in_range"] and not result.errors, result.errors
    result.write(str(tmp_path / "out.o"))
    with open(tmp_path / "out.o", "rb") as f:
        elf = ELFFile(f)
        code = elf.get_section_by_name(".text.in_range").data()
        symtab = elf.get_section_by_name(".symtab")
        rels = {r["r_offset"]: (symtab.get_symbol(r["r_info_sym"]).name, r["r_info_type"], r["r_addend"])
                for s in elf.iter_sections() if isinstance(s, RelocationSection) and s.name == ".rela.text.in_range"
                for r in s.iter_relocations()}
        assert not [s.name for s in elf.iter_sections() if s.name.startswith("runtime_")]
    assert (0x0123456789abcdef).to_bytes(8, "little") not in code
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    loads = [i for i in md.disasm(code, 0) if i.mnemonic == "mov" and "[rip" in i.op_str]
    [load] = loads
    assert rels[load.address + 3] == ("USER_PTR_MAX", 2, -4)  # R_X86_64_PC32 to the variable
    after = next(md.disasm(code[load.address + load.size:], 0))
    assert (after.mnemonic, after.size) == ("nop", 3)


def test_shift_constant_is_refused(tmp_path):
    orig, patched = _objects(tmp_path, SHIFTED=1)
    result = diff_objects(str(orig), str(patched), DiffOptions(kernel=True, objname="vmlinux"))
    assert [(e.symbol, e.reason.split(" (")[0]) for e in result.errors] == [
        ("bucket", "uses the runtime constant d_hash_shift")]
