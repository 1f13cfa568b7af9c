"""The target's own dynamic linker, called in it: dlopen and dlclose (exported by libc since glibc 2.34),
with dlerror's text on failure.

Both take the dynamic linker's lock and allocate: the thread that makes the call must not have been stopped
inside the dynamic linker, the allocator, or a libc function that takes that lock (it would wait on itself
for ever). Other threads run meanwhile, so a lock one of them holds is soon released.
"""
from __future__ import annotations

import os

from patch_build.common.errors import Refused
from patch_build.loader.frames import ALLOCATOR, Avoid, entry_ranges
from patch_build.loader.objects import LoadedObject
from patch_build.loader.remote import RemoteCaller
from patch_build.loader.resolve import Resolver
from patch_build.loader.session import Session, in_clear_thread

RTLD_NOW = 2
DL_CALL_LIMIT = 30.0  # seconds a dlopen may take: constructors run in it
ERROR_LIMIT = 4096  # bytes of dlerror() text read
# libc functions that take the dynamic linker's lock (dl_load_lock, dl_load_write_lock) or call it
DL_LOCKERS = ("dlopen", "dlclose", "dlsym", "dlvsym", "dladdr", "dladdr1", "dlinfo", "dlmopen", "dl_iterate_phdr",
              "pthread_create", "pthread_exit", "exit", "__cxa_finalize", "__cxa_thread_atexit_impl")


def _functions(s: Session) -> tuple[int, int, int]:
    resolver = Resolver(s.objects, {}, s.mem)
    found = [resolver.global_(name) for name in ("dlopen", "dlclose", "dlerror")]
    if not all(f and f[0] for f in found):
        raise Refused([(f"process {s.pid}", "its libc exports no dlopen/dlclose/dlerror (glibc 2.34 or later "
                                            "is needed)")])
    return found[0][0], found[1][0], found[2][0]


def _linker_code(s: Session) -> Avoid:
    """The dynamic linker's code (all of it: its internals have no exported names), the allocator's and
    libc's lock-taking entry points."""
    ranges = [(m.start, m.end) for o in s.objects if o.name.startswith("ld-linux") or o.name.startswith("ld-")
              for m in o.maps if m.executable]
    ranges += entry_ranges(Resolver(s.objects, {}, s.mem), ALLOCATOR + DL_LOCKERS)
    return Avoid(sorted(ranges), "the dynamic linker or the allocator")


def _error(caller: RemoteCaller, dlerror: int) -> str:
    text = caller.call_function(dlerror)
    if not text:
        return "unknown error"
    return caller.mem.read_cstring(text, ERROR_LIMIT)[0].decode("utf-8", "replace")


def dlopen(s: Session, path: str, timeout: float) -> int:
    """The handle of `path` loaded into the target (RTLD_NOW); Refused with dlerror's text on failure."""
    opener, _, dlerror = _functions(s)

    def load(caller: RemoteCaller) -> int:
        handle = caller.call_function(opener, caller.scratch_string(path), RTLD_NOW, limit=DL_CALL_LIMIT)
        if not handle:
            raise Refused([(path, f"dlopen failed in process {s.pid}: {_error(caller, dlerror)}")])
        return handle

    return in_clear_thread(s, _linker_code(s), load, timeout)


def dlclose(s: Session, handle: int, what: str, timeout: float) -> None:
    """dlclose(handle) in the target; Refused with dlerror's text on failure."""
    _, closer, dlerror = _functions(s)

    def close(caller: RemoteCaller) -> None:
        if caller.call_function(closer, handle, limit=DL_CALL_LIMIT) & 0xFFFF_FFFF:
            raise Refused([(what, f"dlclose failed in process {s.pid}: {_error(caller, dlerror)}")])

    in_clear_thread(s, _linker_code(s), close, timeout)


def loaded_library(objects: list[LoadedObject], path: str) -> LoadedObject | None:
    """The loaded object of the file at `path` (the kernel shows mapped files by their real path)."""
    real = os.path.realpath(path)
    return next((o for o in objects if o.path == real), None)


def library_code(objects: list[LoadedObject], path: str) -> list[tuple[int, int]]:
    """[lo, hi) of the executable mappings of the library at `path`, none when it is not loaded."""
    obj = loaded_library(objects, path)
    return [(m.start, m.end) for m in obj.maps if m.executable] if obj else []
