"""sympos of local symbols against a real linked binary, livepatch style, including two units that share a
source basename (a/util.c and b/util.c), told apart by the other local names of their STT_FILE blocks."""
from __future__ import annotations

import subprocess

from patch_build.diffobj.read import read_object
from patch_build.kbuild.deployed import UnitSymbols, load_binary

UNITS = {
    "a/util.c": "static __attribute__((noipa)) int helper(int x) { return x + 1; }\n"
                "static __attribute__((noipa)) int only_a(int x) { return x * 5; }\n"
                "int use_a(int x) { static int calls; calls++; return helper(x) + only_a(x) + calls; }\n",
    "b/util.c": "static __attribute__((noipa)) int helper(int x) { return x - 1; }\n"
                "static __attribute__((noipa)) int only_b(int x) { return x * 7; }\n"
                "int use_b(int x) { static int calls; calls++; return helper(x) + only_b(x) + calls; }\n",
    "main.c": "int use_a(int); int use_b(int);\n"
              "static __attribute__((noipa)) int unique(int x) { return x ^ 3; }\n"
              "int main(int c, char **v) { return use_a(c) + use_b(c) + unique(c); }\n",
}


def test_sympos_in_symtab_order_by_file_block(tmp_path):
    objects = {}
    for name, text in UNITS.items():
        src = tmp_path / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(text)
        obj = tmp_path / f"{name.replace('/', '_')}.o"
        subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-c", str(src), "-o", str(obj)],
                       cwd=src.parent, check=True)
        objects[name] = read_object(str(obj))
    # b/util.c links first: its locals come first in .symtab
    order = [tmp_path / "b_util.c.o", tmp_path / "a_util.c.o", tmp_path / "main.c.o"]
    subprocess.run(["gcc", *map(str, order), "-o", str(tmp_path / "prog")], check=True)
    binary = load_binary(tmp_path / "prog")

    def sympos(unit: str, name: str) -> int:
        obj = objects[unit]
        return UnitSymbols(binary, obj)(next(s for s in obj.symbols if s.name == name))

    assert (sympos("b/util.c", "helper"), sympos("a/util.c", "helper")) == (1, 2)
    assert (sympos("b/util.c", "calls.0"), sympos("a/util.c", "calls.0")) == (1, 2)
    assert sympos("main.c", "unique") == 0
