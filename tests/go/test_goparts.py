"""The Go build's parts on their own (no toolchain run): the compiler listing's parser and comparison, the
type-identity check, closures, the stack-bound check, the .gopatch container."""
from __future__ import annotations

import pytest

from patch_build.kbuild.goasm import changed_functions, identity_uses, parse_listing
from patch_build.kbuild.golang import closure_parent, derived_path
from patch_build.patchformat.gobinary import stack_check_size
from patch_build.patchformat.gopatch import BadGoPatch, GoBind, GoFunc, GoPatch, read_gopatch, write_gopatch

PKG = "example.com/app/store"


def listing(body: str, bytes_line: str, rels: list[str], line: int = 10) -> str:
    insns = "\n".join(f"\t0x{off:04x} {off:05d} (/src/store/store.go:{line})\t{text}" for off, text in body)
    return (f"# {PKG}\n{PKG}.(*Store).add STEXT size=16 args=0x18 locals=0x10 funcid=0x0 align=0x0\n"
            f"{insns}\n\t0x0000 {bytes_line}  ................\n" + "".join(f"\trel {r}\n" for r in rels)
            + f"{PKG}..stmp_0 SRODATA size=8\n\t0x0000 01 00 00 00 00 00 00 00  ........\n")


CODE = "49 3b 66 10 76 08 48 8d 05 00 00 00 00 e8 00 00"


def test_a_function_changes_with_its_bytes_or_its_targets_not_its_lines():
    body = [(0, "CMPQ\tSP, 16(R14)"), (4, "JLS\t14"), (6, f"LEAQ\ttype.{PKG}.Store(SB), AX"),
            (13, "CALL\truntime.newobject(SB)")]
    rels = ["9+4 t=14 type.example.com/app/store.Store+0", "14+4 t=7 runtime.newobject+0"]
    orig = parse_listing(listing(body, CODE, rels))
    assert list(orig) == [f"{PKG}.(*Store).add"]  # the data symbol after it is not a function
    func = orig[f"{PKG}.(*Store).add"]
    assert func.size == 16 and len(func.code) == 16 and len(func.relocs) == 2
    assert changed_functions(orig, parse_listing(listing(body, CODE, rels, line=12))) == ([], [])  # moved only
    other_target = [rels[0], "14+4 t=7 runtime.mallocgc+0"]
    assert changed_functions(orig, parse_listing(listing(body, CODE, other_target))) == ([f"{PKG}.(*Store).add"], [])
    other_bytes = CODE.replace("76 08", "76 09")
    assert changed_functions(orig, parse_listing(listing(body, other_bytes, rels))) == ([f"{PKG}.(*Store).add"], [])


def test_type_identity_uses_are_found_allocation_is_not():
    alloc = [(0, f"LEAQ\ttype.{PKG}.Store(SB), AX"), (7, "NOP"), (8, "CALL\truntime.newobject(SB)")]
    rels = [f"3+4 t=14 type.{PKG}.Store+0"]
    func = parse_listing(listing(alloc, CODE, rels))[f"{PKG}.(*Store).add"]
    assert identity_uses(func, PKG) == []
    boxed = [(0, f"LEAQ\ttype.*{PKG}.Store(SB), AX"), (7, "CALL\tfmt.Sprintf(SB)")]
    rels = [f"3+4 t=14 type.*{PKG}.Store+0", f"9+4 t=14 go.itab.*{PKG}.Store,error+0",
            "12+4 t=14 type.example.com/app/storex.T+0", f"14+4 t=7 type..eq.{PKG}.Store+0"]
    func = parse_listing(listing(boxed, CODE, rels))[f"{PKG}.(*Store).add"]
    assert identity_uses(func, PKG) == [f"type.*{PKG}.Store", f"go.itab.*{PKG}.Store,error"]


def test_closures_and_derived_paths():
    assert closure_parent(f"{PKG}.(*Store).Handle.func1") == f"{PKG}.(*Store).Handle"
    assert closure_parent(f"{PKG}.F.func2.1") == f"{PKG}.F"
    assert closure_parent(f"{PKG}.funcs") is None
    assert derived_path("example.com/app", "fix", "example.com/app/internal/store") == \
        "example.com/app/patchbuild_fix/internal/store"
    assert derived_path("example.com/app", "fix", "example.com/app") == "example.com/app/patchbuild_fix"


@pytest.mark.parametrize("code, size", [
    ("493b6610" "0f8600000000", 10),  # cmp 0x10(%r14),%rsp; jbe rel32
    ("493b6610" "7600", 6),  # jbe rel8
    ("4c8d6424f0" "4d3b6610" "0f8600000000", 15),  # lea -16(%rsp),%r12 (disp8); cmp; jbe
    ("4c8da42400ffffff" "4d3b6610" "7600", 14),  # disp32
    ("488b4008c3", 0),  # a leaf: mov 8(%rax),%rax; ret
    ("493b6610" "90", 0),  # no jbe after the cmp
])
def test_stack_bound_check(code, size):
    assert stack_check_size(bytes.fromhex(code)) == size


def test_gopatch_round_trip_and_tampering(tmp_path):
    path = tmp_path / "fix.gopatch"
    target = {"name": "server", "build_id": "ab", "go_version": "go1.19.8"}
    patch = GoPatch("fix", target, "example.com/app/patchbuild_fix",
                    funcs=[GoFunc(f"{PKG}.(*Store).add", "x")], binds=[GoBind("y", "z")])
    write_gopatch(path, patch, b"\x7fELF plugin")
    first = path.read_bytes()
    write_gopatch(path, patch, b"\x7fELF plugin")
    assert path.read_bytes() == first  # reproducible
    back, plugin = read_gopatch(path)
    assert back == patch and plugin == b"\x7fELF plugin"
    data = bytearray(first)
    data[data.index(b"\x7fELF plugin")] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BadGoPatch, match="SHA-256"):
        read_gopatch(path)
    path.write_bytes(b"")
    with pytest.raises(BadGoPatch, match="not a .gopatch"):
        read_gopatch(path)
