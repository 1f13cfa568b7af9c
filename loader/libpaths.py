"""Where the dynamic linker finds a shared library by name without a program's own search path (RUNPATH,
LD_LIBRARY_PATH): the files its cache lists (`ldconfig -p`, which reads /etc/ld.so.cache) and the default
directories it searches after the cache. The daemon marks these files when a patch targets them, so their
first users are held too (a library in a directory of its own is learned from the processes that map it).
"""
from __future__ import annotations

import os
import subprocess

CACHE = "/etc/ld.so.cache"
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
_OUTPUT_LIMIT = 16 << 20  # bytes of `ldconfig -p` read: a cache of ~100,000 libraries
_LDCONFIG_LIMIT = 10.0  # seconds


def cache_key() -> tuple[int, int]:
    """(inode, mtime ns) of the cache: changes when ldconfig rewrites it (a package installed)."""
    try:
        st = os.stat(CACHE)
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def _cached() -> list[tuple[str, str]]:
    """(soname, path) of each entry of the dynamic linker's cache; none when ldconfig cannot say."""
    try:
        with subprocess.Popen(["ldconfig", "-p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            out = proc.stdout.read(_OUTPUT_LIMIT)
            proc.kill()
            proc.wait(_LDCONFIG_LIMIT)
    except (OSError, subprocess.TimeoutExpired):
        return []
    entries = []
    for line in out.decode("utf-8", "replace").splitlines()[1:]:  # the first line counts them
        name, arrow, path = line.strip().partition(" => ")
        if arrow:
            entries.append((name.split(" (")[0], path))
    return entries


def library_paths(names: set[str]) -> list[str]:
    """The files named as `names` (a soname or a file name) that the dynamic linker finds without a search
    path of the program's own, sorted; each may be a link (the caller resolves it)."""
    found = {path for soname, path in _cached() if soname in names or os.path.basename(path) in names}
    found |= {os.path.join(d, n) for d in DEFAULT_DIRS for n in names if os.path.isfile(os.path.join(d, n))}
    return sorted(found)
