"""The kernel a livepatch is built for: its release, its /lib/modules directories, the names its modules take
(which the livepatch module must not take), and its module files.
"""
from __future__ import annotations

import gzip
import lzma
import mmap
import os
import re
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.kbuild.options import BuildOptions, module_name

MODULE_NAME_MAX = 55  # MODULE_NAME_LEN - 1
LIVEPATCH_PREFIX = "livepatch_"
MODULE_LIST_MAX = 64 << 20  # bytes read of each modules.* list (Debian's are under 1 MiB)
MODULE_COMPRESSIONS = {".xz": lzma.open, ".gz": gzip.open}  # of a distribution's NAME.ko.EXT
MODULE_SIZE_MAX = 256 << 20  # bytes read of a decompressed module (Debian's largest are under 20 MiB)


def livepatch_name(options: BuildOptions) -> str:
    """-n, else livepatch_STEM as kpatch does: a patch named after a kernel module (module.patch) must not
    make a module of that name, which the loader refuses as already loaded. Only [A-Za-z0-9_], as the
    livepatch core's sysfs names."""
    name = module_name(options) if options.name else f"{LIVEPATCH_PREFIX}{module_name(options)}"
    return re.sub(r"[^A-Za-z0-9_]", "_", name)[:MODULE_NAME_MAX]


def kernel_release(options: BuildOptions) -> str:
    """The target kernel's release: from VMLINUX's banner, System.map's file name, else the running kernel."""
    if options.vmlinux is not None:
        try:
            with open(options.vmlinux, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                m = re.search(rb"Linux version (\S+) ", data)
                release = m.group(1).decode(errors="replace") if m else None  # the match reads the map: not after
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise InputError(f"-v {options.vmlinux}: cannot read it: {e}") from None
        if release:
            return release
    if options.system_map is not None:
        m = re.match(r"(?:System\.map|kallsyms)-(.+)$", options.system_map.name)
        if m:
            return m.group(1)
    if options.headers is not None:
        uts = options.headers / "include" / "generated" / "utsrelease.h"
        if uts.is_file():
            m = re.search(r'UTS_RELEASE "([^"]+)"', uts.read_text())
            if m:
                return m.group(1)
    return os.uname().release


def module_dirs(release: str, system_map: Path | None) -> list[Path]:
    """The target kernel's /lib/modules/RELEASE: this system's, or next to the image the symbols are of."""
    dirs = [Path("/lib/modules") / release]
    if system_map is not None:
        dirs.append(system_map.resolve().parent.parent / "lib" / "modules" / release)
    return [d for d in dirs if d.is_dir()]


def ko_name(path: str) -> str:
    """The module a file NAME.ko[.EXT] holds, as its file names it ('-' and '_' still apart)."""
    return re.sub(r"\.ko(\.[a-z]+)?$", "", os.path.basename(path))


def kernel_module_names(moddir: Path) -> set[str]:
    """The names a /lib/modules/RELEASE directory gives the kernel's modules, '-' written '_' as the kernel
    compares them: built in (modules.builtin, and modules.builtin.modinfo, which also names the built-in
    code that only has parameters: /sys/module/NAME exists for them all) and loadable (modules.dep, *.ko)."""
    names: set[str] = set()
    for listing, separator in (("modules.builtin", "\n"), ("modules.dep", "\n"), ("modules.builtin.modinfo", "\0")):
        try:
            with open(moddir / listing, errors="replace") as f:
                entries = f.read(MODULE_LIST_MAX).split(separator)
        except OSError:
            continue
        if listing.endswith(".modinfo"):  # NAME.KEY=VALUE
            names |= {e.split(".", 1)[0] for e in entries if "." in e.split("=", 1)[0]}
        else:  # kernel/fs/ext4/ext4.ko[: dependencies]
            names |= {ko_name(e.split(":", 1)[0]) for e in entries if ".ko" in e}
    if (moddir / "kernel").is_dir():
        names |= {ko_name(p.name) for p in (moddir / "kernel").rglob("*.ko*")}
    return {n.replace("-", "_") for n in names if n}


def check_module_name(name: str, release: str, dirs: list[Path], progress) -> None:
    """Refuse a module name the kernel already has (built in or loadable): it would not load."""
    taken = {n for d in dirs for n in kernel_module_names(d)}
    if not taken:
        progress.note(f"warning: no module list of {release} found (modules.builtin, modules.dep): "
                      f"the name {name} is not checked against the kernel's modules")
    elif name.replace("-", "_") in taken:
        raise InputError(f"module name {name}: the kernel {release} has a module of that name; choose another "
                         "with -n")


def find_module_file(dirs: list[Path], module: str) -> Path | None:
    """The file NAME.ko[.EXT] of `module` (as the kernel names it) in the module directories."""
    for root in dirs:
        for ko in sorted(root.rglob("*.ko*")):
            if ko_name(ko.name).replace("-", "_") == module:
                return ko
    return None


def uncompressed(ko: Path, workdir: Path) -> Path:
    """The module itself: Debian's 6.12 modules are xz-compressed (NAME.ko.xz), written to `workdir`."""
    opener = MODULE_COMPRESSIONS.get(ko.suffix)
    if opener is None:
        return ko
    out = workdir / ko.stem
    out.parent.mkdir(exist_ok=True)
    try:
        with opener(ko) as f:
            data = f.read(MODULE_SIZE_MAX + 1)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise InputError(f"{ko}: cannot decompress it ({e})") from None
    if len(data) > MODULE_SIZE_MAX:
        raise InputError(f"{ko}: decompresses to more than {MODULE_SIZE_MAX >> 20} MiB: not a kernel module")
    out.write_bytes(data)
    return out
