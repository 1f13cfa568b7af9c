"""The sizes of the special-section structs (struct alt_instr, jump_entry, ...) of the kernel tree being built.

As kpatch-build reads them (from vmlinux's DWARF, into ALT_STRUCT_SIZE and the like), but without a debug
vmlinux: a probe per struct, `const unsigned long patch_build_sizeof = sizeof(struct NAME);`, compiled by the
tree's own kbuild (`make M=DIR NAME.o`: its configuration, flags and headers), and the value read back from the
object. A struct this kernel does not define (paravirt_patch_site after 6.8, pi_entry without PRINTK_INDEX)
fails to compile and is left out; a table made of it then cannot occur either. The result is kept in the
tree until it is configured again.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

from patch_build.diffobj.arch.x86_64_special import STRUCT_HEADERS
from patch_build.common.errors import InputError
from patch_build.diffobj.read import read_object
from patch_build.diffobj.struct_sizes import StructSizes, parse_size

PROBE_SYMBOL = "patch_build_sizeof"
CACHE_NAME = "patch-build.struct-sizes.json"  # in KSRC/include/config, beside kbuild's own state


def struct_sizes(ksrc: Path, env: dict[str, str], jobs: int, workdir: Path) -> StructSizes:
    cache = ksrc / "include" / "config" / CACHE_NAME
    autoconf = ksrc / "include" / "generated" / "autoconf.h"
    if cache.is_file() and cache.stat().st_mtime >= autoconf.stat().st_mtime:
        return StructSizes(json.loads(cache.read_text()))
    sizes = _probe(ksrc, env, jobs, workdir / "struct-sizes")
    cache.write_text(json.dumps(sizes, sort_keys=True) + "\n")
    return StructSizes(sizes)


def _probe(ksrc: Path, env: dict[str, str], jobs: int, probe: Path) -> dict[str, int]:
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir(parents=True)
    (probe / "Kbuild").write_text("")
    for name, header in STRUCT_HEADERS.items():
        (probe / f"{name}.c").write_text(f"#include <linux/kernel.h>\n#include <{header}>\n"
                                         f"const unsigned long {PROBE_SYMBOL} = sizeof(struct {name});\n")
    log = probe / "build.log"
    with open(log, "wb") as out:  # -k: the structs this kernel lacks fail, the others are built
        subprocess.run(["make", "-k", f"-j{jobs}", "-C", os.fspath(ksrc), f"M={probe}",
                        *(f"{name}.o" for name in STRUCT_HEADERS)],
                       env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sizes = {}
    for name in STRUCT_HEADERS:
        obj = probe / f"{name}.o"
        if obj.is_file():
            sizes[name] = _read_size(obj)
    if not sizes:
        raise InputError(f"could not measure the kernel's special-section structs in {ksrc}: no probe compiled "
                         f"(see {log})")
    return sizes


def _read_size(obj: Path) -> int:
    model = read_object(os.fspath(obj))
    sym = next((s for s in model.symbols if s.name == PROBE_SYMBOL and s.section is not None), None)
    if sym is None or sym.size != 8:
        raise InputError(f"{obj}: the struct-size probe has no 8-byte {PROBE_SYMBOL}")
    (value,) = struct.unpack_from("<Q", sym.section.data, sym.value)
    return parse_size(obj.stem, str(value), os.fspath(obj))[1]
