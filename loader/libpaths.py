"""Where the dynamic linker finds a shared library by name without a program's own search path (RUNPATH,
LD_LIBRARY_PATH): the files its cache lists (`ldconfig -p`, which reads /etc/ld.so.cache) and the default
directories it searches after the cache. The daemon marks these files when a patch targets them, so their
first users are held too (a library in a directory of its own is learned from the processes that map it).
"""
from __future__ import annotations

import os
import selectors
import subprocess
import threading
import time

CACHE = "/etc/ld.so.cache"
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
_OUTPUT_LIMIT = 16 << 20  # bytes of `ldconfig -p` read: a cache of ~100,000 libraries
# Seconds `ldconfig -p` has to print: it takes milliseconds (6 ms for 600 libraries; hundreds of times that
# still fit, a loaded machine) but for ever on a stalled filesystem, and the daemon's main thread takes no exec
# handoff meanwhile (each let go unheld after 1 s): a few seconds, no more.
_LDCONFIG_LIMIT = 2.0
# Seconds a killed ldconfig has to die: milliseconds, unless the kernel holds it (an uninterruptible sleep).
_KILL_LIMIT = 0.5


def cache_key() -> tuple[int, int]:
    """(inode, mtime ns) of the cache: changes when ldconfig rewrites it (a package installed)."""
    try:
        st = os.stat(CACHE)
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def _ldconfig_output() -> bytes | None:
    """What `ldconfig -p` prints, cut after its last whole line within _OUTPUT_LIMIT bytes; None when it
    cannot say (not run, or not done within _LDCONFIG_LIMIT seconds)."""
    deadline = time.monotonic() + _LDCONFIG_LIMIT
    try:
        proc = subprocess.Popen(["ldconfig", "-p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    out = bytearray()
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while len(out) < _OUTPUT_LIMIT:  # a read alone would wait as long as ldconfig does
                if not selector.select(deadline - time.monotonic()):
                    return None
                chunk = os.read(proc.stdout.fileno(), min(_OUTPUT_LIMIT - len(out), 1 << 16))  # a pipe's size
                if not chunk:
                    return bytes(out)
                out += chunk
        return bytes(out[:out.rfind(b"\n") + 1])  # cut: a part of a line could name a wrong path
    except OSError:
        return None
    finally:
        proc.stdout.close()
        proc.kill()
        try:
            proc.wait(_KILL_LIMIT)
        except subprocess.TimeoutExpired:  # reaped when the kernel lets it die, not waited for here
            threading.Thread(target=proc.wait, name="ldconfig reaper", daemon=True).start()


def _cached() -> list[tuple[str, str]]:
    """(soname, path) of each entry of the dynamic linker's cache; none when ldconfig cannot say."""
    out = _ldconfig_output()
    if out is None:
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
