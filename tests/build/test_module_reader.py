"""patchformat.module.read_module on modules assembled with the real `as` and linked by linker.user."""
from __future__ import annotations

import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from patch_build.common.errors import InputError
from patch_build.linker.user import link_user_module
from patch_build.patchformat import integrity
from patch_build.patchformat.module import Target, read_module

# A differ output in miniature: one replacement function and its .kpatch.funcs entry.
PATCH_OBJECT = """
	.section .text.fix_me,"ax",@progbits
	.weak fix_me
	.type fix_me,@function
fix_me:
	ret
	.size fix_me,.-fix_me
	.section .kpatch.strings,"aMS",@progbits,1
.Lname: .string "fix_me"
.Lobj: .string "{objname}"
	.section .kpatch.funcs,"a",@progbits
	.quad {new_addr}
	.quad {new_size}
	.quad 0
	.quad 12
	.quad 3
	.quad .Lname
	.quad .Lobj
"""


def assemble(tmp_path, source: str, name: str = "part.o"):
    (tmp_path / "part.s").write_text(source)
    subprocess.run(["as", "-o", str(tmp_path / name), str(tmp_path / "part.s")], check=True)
    return tmp_path / name


def link(tmp_path, objname: str = "server", new_addr: str = "fix_me", new_sizes: tuple[int, ...] = (1,)):
    """The module made of one patch object per entry of `new_sizes` (several: the same function replaced by
    several units, as an inline or template function is)."""
    parts = [assemble(tmp_path, PATCH_OBJECT.format(objname=objname, new_addr=new_addr, new_size=size), f"p{i}.o")
             for i, size in enumerate(new_sizes)]
    return link_user_module(parts, "fix", [Target("server", "00ff12ab")], tmp_path / "fix.kpatch", tmp_path)


def test_reads_what_the_linker_wrote(tmp_path):
    info = read_module(link(tmp_path))
    assert info.valid, info.problems
    assert (info.name, info.version) == ("fix", 1)
    assert [(t.name, t.build_id) for t in info.targets] == [("server", "00ff12ab")]
    [func] = info.funcs
    assert (func.name, func.objname, func.sympos, func.old_size, func.new_size, func.new_symbol) == \
        ("fix_me", "server", 3, 12, 1, "fix_me")


def test_inconsistencies_are_problems(tmp_path):
    # objname names no recorded target; new_addr is a plain number, not a relocation to the new function
    info = read_module(link(tmp_path, objname="client", new_addr="0"))
    assert not info.valid
    assert any("'client' is not a recorded target" in p for p in info.problems)
    assert any("no R_X86_64_64 relocation for new_addr" in p for p in info.problems)


def test_identical_duplicates_count_once(tmp_path):
    info = read_module(link(tmp_path, new_sizes=(1, 1)))
    assert info.valid, info.problems
    assert [f.name for f in info.funcs] == ["fix_me"]


def test_conflicting_duplicates_are_a_problem(tmp_path):
    info = read_module(link(tmp_path, new_sizes=(1, 2)))
    assert any("replaced twice, differently" in p for p in info.problems)


HOOKS_OBJECT = """
	.section .text.ready,"ax",@progbits
	.type ready,@function
ready:
	xor %eax,%eax
	ret
	.size ready,.-ready
	.type again,@function
again:
	ret
	.size again,.-again
"""


def test_hooks_by_stage(tmp_path):
    """Hooks from `.kpatch.hooks.STAGE` (a section symbol + addend resolved to its function), stages in run
    order; a second hook of a stage, a stage not known and a pointer to no function are problems."""
    parts = [assemble(tmp_path, PATCH_OBJECT.format(objname="server", new_addr="fix_me", new_size=1), "p.o")]

    def module(tables: str):
        parts[1:] = [assemble(tmp_path, HOOKS_OBJECT + tables, "h.o")]
        return read_module(link_user_module(parts, "fix", [Target("server", "00ff12ab")], tmp_path / "fix.kpatch",
                                            tmp_path))

    info = module('\t.section .kpatch.hooks.post_revert,"aw"\n\t.quad again\n'
                  '\t.section .kpatch.hooks.pre_apply,"aw"\n\t.quad .text.ready\n')
    assert info.valid, info.problems
    assert [(h.stage, h.function) for h in info.hooks] == [("pre_apply", "ready"), ("post_revert", "again")]
    info = module('\t.section .kpatch.hooks.pre_apply,"aw"\n\t.quad ready\n\t.quad again\n'
                  '\t.section .kpatch.hooks.on_tuesday,"aw"\n\t.quad ready\n'
                  '\t.section .kpatch.hooks.post_apply,"aw"\n\t.quad .text.ready+1\n')
    assert any("2 pre_apply hooks (ready, again): one per stage" in p for p in info.problems), info.problems
    assert any(".kpatch.hooks.on_tuesday: no such hook stage" in p for p in info.problems), info.problems
    assert any(".kpatch.hooks.post_apply entry 0: the hook points to no function" in p for p in info.problems)


@pytest.mark.parametrize("content, message", [
    (b"not an elf file at all", "not an ELF file"),
    (b"\x7fELF\x02\x01", "truncated ELF header"),
    (None, "not a patch module"),
])
def test_not_a_module(tmp_path, content, message):
    path = tmp_path / "bad.kpatch"
    if content is None:
        path = assemble(tmp_path, "\t.text\n\tret\n", "bad.kpatch")
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_module(path)


def test_sealed_at_link(tmp_path):
    module = link(tmp_path)
    info = read_module(module)
    assert info.seal.intact and not info.seal.signer and len(info.seal.digest) == 64
    data = bytearray(module.read_bytes())
    data[-1] ^= 1  # any byte outside the record: here the section header table's last
    assert read_module(module, bytes(data)).problems[0].startswith("digest mismatch")


def test_integrity_record_must_hold_its_bytes(tmp_path):
    """A `.kpatch.integrity` that is NOBITS has no bytes in the file to read the record from."""
    module = link(tmp_path)
    data = bytearray(module.read_bytes())
    with open(module, "rb") as f:
        elf = ELFFile(f)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == integrity.SECTION)
        at = elf["e_shoff"] + index * elf["e_shentsize"] + 4  # sh_type
    data[at:at + 4] = (8).to_bytes(4, "little")  # SHT_NOBITS
    with pytest.raises(InputError, match="not a 136-byte PROGBITS section"):
        read_module(module, bytes(data))
