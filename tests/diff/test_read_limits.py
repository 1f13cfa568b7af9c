"""The reader guards LIEF's limits: section counts past 65,280 and NOBITS contents."""
from __future__ import annotations

import struct
import subprocess

import pytest

from common.errors import InputError
from diffobj.read import read_object

SOURCE = "int zeroed[64]; int filled = 7; int use(int i) { return zeroed[i] + filled; }\n"


@pytest.fixture(scope="module")
def small_object(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    (d / "u.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-c", "u.c", "-o", "u.o"],
                   cwd=d, check=True)
    return d / "u.o"


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
