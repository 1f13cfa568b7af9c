"""The compiler wrapper with the real gcc: flags added, objects recorded, however the build calls it."""
from __future__ import annotations

import os
import subprocess

from patch_build.kbuild.wrapper import install_wrappers, read_log


def test_records_objects_and_adds_sections(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    (tmp_path / "b.c").write_text("int b(void) { return 2; }\n")
    (tmp_path / "main.c").write_text("int a(void); int b(void); int main(void) { return a() + b(); }\n")
    log = tmp_path / "objects.log"
    env = install_wrappers(tmp_path / "wrap", log, {"PATH": os.environ["PATH"], "CC": "gcc -m64"})
    assert env["CC"] == f"{tmp_path}/wrap/gcc -m64"
    script = (
        "$CC -O2 -c a.c && "  # no -o: a.o in the cwd
        "cd sub && cc -O2 -c ../b.c -o b.o && cd .. && "
        "gcc -O2 -o prog main.c a.o sub/b.o"  # compile-and-link: no object to record
    )
    subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, check=True)
    objects, end = read_log(log)
    assert sorted(objects) == [tmp_path / "a.o", tmp_path / "sub" / "b.o"]
    assert objects[tmp_path / "sub" / "b.o"].source == tmp_path / "b.c"
    assert objects[tmp_path / "a.o"].args == ["-m64", "-O2", "-c", "a.c"]
    assert os.path.basename(objects[tmp_path / "a.o"].compiler).startswith(("gcc", "x86_64-linux-gnu-gcc"))
    sections = subprocess.run(["readelf", "-SW", str(tmp_path / "a.o")], capture_output=True, text=True).stdout
    assert ".text.a" in sections  # -ffunction-sections was added
    linked = subprocess.run(["readelf", "-SW", str(tmp_path / "prog")], capture_output=True, text=True).stdout
    assert ".rela.text" in linked  # the link got -Wl,--emit-relocs (link-diff reads the program's relocations)
    assert end == log.stat().st_size and read_log(log, end)[0] == {}
