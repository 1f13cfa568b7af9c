"""Shared libraries in a running process: `lib load`/`lib unload` (the target's own dlopen/dlclose),
`redirect`/`restore` (calls of a function sent to a function of a loaded library) and hand-written patch
libraries (`apply fix.so`: a .so whose PATCH_REPLACE table, templates/user/include/patch-replace.h, names
its replacements).

Each is a PatchRecord (loader.state) with `library` set, so `list`, `revert` and recovery handle it as they
do a module's: its mappings hold the header and, for each redirected function, a far-jump stub near it (a
library lies anywhere, beyond the reach of the rel32 jump written into the old function). Jumps are written
by loader.jumps.commit (the same write-ahead states, stack check and retries as `apply`); a revert puts
them back, dlcloses the handle the record owns once no thread runs the library's code, and unmaps.
"""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

from patch_build.common.errors import InputError, Refused
from patch_build.elfcore.binary import read_binary
from patch_build.elfcore.constants import ET_DYN, STT_FUNC
from patch_build.elfcore.headers import E_TYPE_END, elf_type
from patch_build.loader import dynlink, layout, x86_64 as arch
from patch_build.loader.critical import Critical
from patch_build.loader.jumps import commit
from patch_build.loader.objects import LoadedObject
from patch_build.loader.placement import free_addresses_near, map_near
from patch_build.loader.procfs import check_process
from patch_build.loader.recovery import changing
from patch_build.loader.remote import PROT_EXEC, PROT_READ, RemoteCaller
from patch_build.loader.revert import revert_records
from patch_build.loader.session import Session, Stats, in_target, run
from patch_build.loader.state import ACTIVE, PENDING, PatchedFunc, PatchRecord, current_patches
from patch_build.loader.undo import discard

LIB_PREFIX, REDIRECT_PREFIX = "lib:", "redirect:"
TABLE = "patch_replace"  # the section PATCH_REPLACE puts its entries in
ENTRY = struct.Struct("<QQ")  # struct patch_replace { const char *old_function; void (*new_function)(void); }
TABLE_LIMIT = 4096  # entries
NAME_LIMIT = 256  # bytes of an old function's name read from the target


def is_shared_library(path: str) -> bool:
    """An ELF shared object (what `apply` takes as a hand-written patch library, not a module)."""
    try:
        with open(path, "rb") as f:
            head = f.read(E_TYPE_END)
    except OSError:
        return False
    return elf_type(head) == ET_DYN


# ---- lib load / unload ----------------------------------------------------------------------------------

def load_library(pid: int, path: str, timeout: float = 10.0) -> tuple[PatchRecord, Stats]:
    """dlopen(path) in the target, recorded as `lib:NAME`."""
    check_process(pid)
    module = LIB_PREFIX + os.path.basename(path)
    path = _library_file(path)
    return run(pid, "lib load", lambda s: _load(s, module, path, timeout), wait=timeout)


def _load(s: Session, module: str, path: str, timeout: float):
    with changing(s, timeout) as critical:
        record = _opened(s, critical, module, path, "loaded", timeout,
                         lambda handle: _install(s, critical, module, path, path, handle, [], False, timeout))
    return record, s.stats


def unload_library(pid: int, name: str, timeout: float = 10.0) -> tuple[PatchRecord, Stats]:
    """dlclose in the target a library `lib load` loaded (NAME or its path); refused while a redirect or a
    patch library leads into it."""
    check_process(pid)
    return run(pid, "lib unload", lambda s: _unload(s, name, timeout), wait=timeout)


def _unload(s: Session, name: str, timeout: float):
    module = LIB_PREFIX + os.path.basename(name)
    record = next((r for r in s.patches if r.module == module), None)
    if record is None:
        raise InputError(f"no library {os.path.basename(name)} loaded by patch-ctl in process {s.pid}")
    users = [r.module for r in s.patches if r.state == ACTIVE and r.funcs and r.library == record.library]
    if users:
        raise Refused([(os.path.basename(name), f"in use: {users[-1]} redirects into it (restore or revert it "
                                                f"first)")])
    done, stats = revert_records(s, module, timeout)
    return done[0], stats


# ---- redirect / restore ---------------------------------------------------------------------------------

def redirect(pid: int, old: str, new: str, timeout: float = 10.0, stack_check: bool = True
             ) -> tuple[PatchRecord, Stats]:
    """Send calls of function OLD ([OBJ:]NAME, of the program or of a library) to NEW ([LIB:]NAME, a
    function of a loaded library: without LIB, of the newest library `lib load` loaded that has it)."""
    check_process(pid)
    return run(pid, "redirect", lambda s: _redirect(s, old, new, timeout, stack_check), wait=timeout)


def _redirect(s: Session, old: str, new: str, timeout: float, stack_check: bool):
    with changing(s, timeout) as critical:
        lib, new_addr = _new_function(s, new)
        objname, name, addr, size = _old_function(s, old, exclude=lib)
        module = f"{REDIRECT_PREFIX}{objname}:{name}"
        _refuse_applied(s, module, "redirected")
        owner = [r.module for r in s.patches if r.handle and r.library == lib.path]
        record = _install(s, critical, module, lib.path, lib.path, 0, [(objname, name, addr, size, new_addr)],
                          stack_check, timeout, depends=owner[-1:])
    return record, s.stats


def restore(pid: int, old: str, timeout: float = 10.0) -> tuple[PatchRecord, Stats]:
    """Undo the redirect of function OLD ([OBJ:]NAME)."""
    check_process(pid)
    return run(pid, "restore", lambda s: _restore(s, old, timeout), wait=timeout)


def _restore(s: Session, old: str, timeout: float):
    objname, _, name = old.rpartition(":")
    found = [r for r in s.patches if r.module.startswith(REDIRECT_PREFIX) and r.funcs and r.funcs[0].name == name
             and objname in ("", r.funcs[0].objname)]
    if not found:
        raise InputError(f"no redirect of {old} in process {s.pid}")
    if len(found) > 1:
        raise InputError(f"{name} is redirected in several objects ({', '.join(r.funcs[0].objname for r in found)})"
                         f": name it OBJ:{name}")
    done, stats = revert_records(s, found[0].module, timeout)
    return done[0], stats


# ---- hand-written patch libraries -----------------------------------------------------------------------

def apply_library(pid: int, path: str, timeout: float = 10.0, stack_check: bool = True
                  ) -> tuple[PatchRecord, Stats]:
    """Load a patch library and redirect each function its PATCH_REPLACE table names to its replacement;
    recorded as the library's name without `.so` (reverted with `revert NAME`, which also dlcloses it)."""
    check_process(pid)
    module = os.path.basename(path).removesuffix(".so")
    path = _library_file(path)
    table = _table(path)
    return run(pid, "apply", lambda s: _apply(s, module, path, table, timeout, stack_check), wait=timeout)


def _apply(s: Session, module: str, path: str, table: tuple[int, int], timeout: float, stack_check: bool):
    def redirect_table(handle: int) -> PatchRecord:
        lib = dynlink.loaded_library(s.objects, path)
        if lib is None:
            raise Refused([(module, f"dlopen gave a handle, but {path} is not mapped in process {s.pid}")])
        olds = []
        for old_name, new_addr in _entries(s, lib, *table):
            objname, name, addr, size = _old_function(s, old_name, exclude=lib)
            olds.append((objname, name, addr, size, new_addr))
        return _install(s, critical, module, path, lib.path, handle, olds, stack_check, timeout)

    with changing(s, timeout) as critical:
        record = _opened(s, critical, module, path, "applied", timeout, redirect_table)
    return record, s.stats


def _opened(s: Session, critical: Critical, module: str, path: str, what: str, timeout: float,
            then: Callable[[int], PatchRecord]) -> PatchRecord:
    """dlopen `path` in the target (unless `module` is already there), then then(handle) on the refreshed
    session; a failure of `then` dlcloses the library again."""
    _refuse_applied(s, module, what)
    critical.safe_point()
    handle = dynlink.dlopen(s, path, timeout)
    try:
        s.refresh()
        return then(handle)
    except BaseException:
        _close_quietly(s, handle, module, timeout)
        raise


def _table(path: str) -> tuple[int, int]:
    """(link-time address, entry count) of the library's PATCH_REPLACE table, read from the file before
    anything of it runs in the target."""
    name = os.path.basename(path)
    lib = read_binary(path)
    if not lib.x86_64:
        raise InputError(f"{name}: not an x86-64 shared library")
    table = lib.section(TABLE)
    if table is None:
        raise InputError(f"{name}: no {TABLE} table: declare its replacements with PATCH_REPLACE(old, new) "
                         "from patch-replace.h")
    addr, size = table
    if not size or size % ENTRY.size or size // ENTRY.size > TABLE_LIMIT or not addr:
        raise InputError(f"{name}: malformed {TABLE} table ({size} bytes, entries are {ENTRY.size})")
    return addr, size // ENTRY.size


def _entries(s: Session, lib: LoadedObject, addr: int, count: int) -> list[tuple[str, int]]:
    """(old function name, replacement address) of each table entry, as the dynamic linker relocated it."""
    code = [m for m in lib.maps if m.executable]
    out = []
    for old, new in ENTRY.iter_unpack(s.mem.read(lib.base + addr, count * ENTRY.size)):
        name = s.mem.read_cstring(old, NAME_LIMIT)[0].decode("utf-8", "replace") if old else ""
        if not name:
            raise InputError(f"{lib.name}: a {TABLE} entry names no old function")
        if not any(new in m for m in code):
            raise InputError(f"{lib.name}: the replacement of {name} ({new:#x}) is not in the library's code")
        out.append((name, new))
    return out


# ---- shared steps ---------------------------------------------------------------------------------------

def _library_file(path: str) -> str:
    """The path dlopen gets: absolute (a bare name would be searched for in the target's library path) and
    real (the name /proc/PID/maps shows it by, which records compare)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    return os.path.realpath(path)


def _refuse_applied(s: Session, module: str, what: str) -> None:
    if any(r.module == module for r in s.patches):
        raise Refused([(module, f"already {what} in process {s.pid} (undo it first)")])


def _old_function(s: Session, spec: str, exclude: LoadedObject | None) -> tuple[str, str, int, int]:
    """(object name, name, address, size) of function [OBJ:]NAME: the first object defining it globally, in
    map order (the executable first), or the only local of that name."""
    objname, _, name = spec.rpartition(":")
    for obj in s.objects:
        if obj is exclude or (objname and obj.name != objname):
            continue
        sym = obj.globals.get(name)
        if sym is None and len(obj.locals_named(name)) == 1:
            sym = obj.locals_named(name)[0]
        if sym is None or sym.type != STT_FUNC:
            continue
        addr = obj.base + sym.value
        if not any(m.executable and addr in m and addr + max(sym.size, 1) <= m.end for m in obj.maps):
            raise Refused([(name, f"its address {addr:#x} is not in the code of {obj.name}")])
        need = arch.min_redirect_size(s.mem.read(addr, 16))
        if sym.size and sym.size < need:
            raise Refused([(name, f"is {sym.size} bytes, too short for a {need}-byte redirect")])
        return obj.name, name, addr, sym.size or need
    raise Refused([(spec, f"no such function in process {s.pid}")])


def _new_function(s: Session, spec: str) -> tuple[LoadedObject, int]:
    """(library, address) of function [LIB:]NAME."""
    libname, _, name = spec.rpartition(":")
    if libname:
        real = os.path.realpath(libname) if os.sep in libname else None
        libs = [o for o in s.objects if o.path == real or o.name == libname]
        if not libs:
            raise Refused([(libname, f"no such library loaded in process {s.pid}")])
    else:
        loaded = [r.library for r in reversed(s.patches) if r.module.startswith(LIB_PREFIX)]
        libs = [o for path in loaded for o in s.objects if o.path == path]
        if not libs:
            raise Refused([(spec, "no library loaded with `patch-ctl lib load` to take it from: name it LIB:NAME")])
    for lib in libs:
        sym = lib.globals.get(name)
        if sym is not None and sym.type == STT_FUNC and sym.shndx:
            return lib, lib.base + sym.value
    raise Refused([(spec, f"no such function in {', '.join(o.name for o in libs)}")])


def _install(s: Session, critical: Critical, module: str, path: str, library: str, handle: int,
             olds: list[tuple[str, str, int, int, int]], stack_check: bool, timeout: float,
             depends: list[str] | None = None) -> PatchRecord:
    """Record `module` in the target and redirect each old function (objname, name, address, size, new
    address) through a stub near it: one mapping per object holding old functions (the first also holds
    the header; a single header-only mapping when there are none)."""
    groups: dict[str, list] = {}
    for old in olds:
        groups.setdefault(old[0], []).append(old)
    current = current_patches(s.patches)
    seq = max((r.seq for r in s.patches), default=0) + 1
    big = 1 << 62
    header = layout.align(len(PatchRecord(module, big, path, time.time(), [[big, big]] * max(len(groups), 1),
                                    [[big, big]] * len(groups), PENDING,
                                    [{"name": g, "build_id": "x" * 40} for g in groups],
                                    [PatchedFunc(n, g, 0, big, big, big, big, big, "00" * 16, "x" * 256)
                                     for g, n, *_ in olds], [], list(depends or []), library, big).encode()) + 256, 16)
    plan = []  # (objname, offset of its stubs, size, candidates)
    for i, (objname, group) in enumerate(groups.items() or [("", [])]):
        off = header if i == 0 else 0
        size = layout.align(off + arch.STUB_SIZE * len(group), layout.PAGE)
        obj = next((o for o in s.objects if o.name == objname), None)
        anchors = [a for _, _, a, n, _ in group for a in (a, a + n)] + ([obj.start, obj.end] if obj else [])
        candidates = free_addresses_near(s.maps, size, anchors) if anchors else [0]
        if not candidates:
            raise Refused([(module, f"no free address range within ±2 GB of {objname}")])
        plan.append((objname, off, size, candidates))
    bases: list[int] = []
    record = None
    try:
        critical.safe_point()

        def map_all(caller: RemoteCaller) -> None:
            for objname, _, size, candidates in plan:
                base = map_near(caller, f"kpatch:{module}", candidates, size) if candidates != [0] else \
                    caller.map_named(f"kpatch:{module}", 0, size)
                if not base:
                    raise Refused([(module, f"could not map memory near {objname}")])
                bases.append(base)

        in_target(s, map_all)
        critical.safe_point()
        funcs, images = [], []
        for (objname, off, size, _), base, group in zip(plan, bases, groups.values() or [[]]):
            image = bytearray(size)
            for j, (_, name, addr, old_size, new_addr) in enumerate(group):
                stub = base + off + j * arch.STUB_SIZE
                image[stub - base:stub - base + arch.STUB_SIZE] = arch.far_stub(new_addr)
                site, _ = arch.redirect(s.mem.read(addr, 16), addr, stub)
                prev = current.get(addr)
                funcs.append(PatchedFunc(name, objname, 0, addr, old_size, stub, arch.STUB_SIZE, site,
                                         s.mem.read(site, arch.JMP_REL32_SIZE).hex(), prev[0].module if prev else None))
            images.append(image)
        deps = sorted(set(depends or []) | {f.prev for f in funcs if f.prev})
        objects = {o.name: o for o in s.objects}
        record = PatchRecord(module, seq, path, time.time(), [[b, size] for b, (_, _, size, _) in zip(bases, plan)],
                             [[b + off, b + off + arch.STUB_SIZE * len(g)] for b, (_, off, _, _), g
                              in zip(bases, plan, groups.values())],
                             PENDING if funcs else ACTIVE,
                             [{"name": g, "build_id": objects[g].build_id} for g in groups], funcs, depends=deps,
                             library=library, handle=handle)
        encoded = record.encode()
        images[0][:len(encoded)] = encoded
        for base, image in zip(bases, images):
            s.mem.write(base, bytes(image))

        def protect_all(caller: RemoteCaller) -> None:  # the stubs run; the header is written through /proc
            for base, (_, _, size, _) in zip(bases, plan):
                caller.mprotect(base, size, PROT_READ | PROT_EXEC)

        in_target(s, protect_all)
        critical.safe_point()
        if funcs:
            commit(s, record, current, stack_check, timeout, critical)
    except BaseException:
        if record is None or record.state != ACTIVE:
            discard(s, record, [(b, size) for b, (_, _, size, _) in zip(bases, plan)], timeout)
        raise
    return record


def _close_quietly(s: Session, handle: int, module: str, timeout: float) -> None:
    """Undo a dlopen whose work failed; what failed is what is reported."""
    try:
        dynlink.dlclose(s, handle, module, timeout)
    except Exception:  # noqa: BLE001 - the process gone, or a second failure: the first is reported
        s.stats.warnings.append(f"{module}: the library stays loaded in process {s.pid} (dlclose failed)")

