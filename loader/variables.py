"""Read and set global and static variables of a running process by name: the library behind `patch-ctl var`.

Variables are found in the DWARF of every loaded object (loader.dwarftypes), or, for an object without
DWARF, in its symbol tables with a type the user names. A set writes the new bytes with every thread
stopped (as apply's jumps are), after noting in the target what it is about to do: each set is recorded
(name, address, old and new bytes) in a memfd mapping named `kpatch-var:sets` with a header like
loader.state's, so `patch-ctl list` shows it and a later `var undo` puts the old bytes back. A patch-ctl
killed between the note and the write is finished by the next one (the note is kept when the new bytes
are in place, dropped when the old ones still are). `patch-ctl flags` (loader.gflags) records its sets
here too.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from patch_build.common.errors import InputError, Refused
from patch_build.elfcore.constants import SHN_UNDEF, STB_LOCAL, STT_FILE, STT_OBJECT, STT_TLS
from patch_build.elfcore.symbols import ElfSymbol
from patch_build.loader import faults
from patch_build.loader.critical import Critical
from patch_build.loader.dwarftypes import BOOL, CHARS, CSTRING, ENUM, FLOAT, INT, STDSTRING, Variable, VarType, variables
from patch_build.loader.frames import registry_of
from patch_build.loader.objects import LoadedObject
from patch_build.loader.procfs import Mapping, Memory, read_maps
from patch_build.loader.recovery import changing
from patch_build.loader.remote import RemoteCaller
from patch_build.loader.resolve import Resolver
from patch_build.loader.session import Session, Stats, in_clear_thread, in_target, run
from patch_build.loader.state import RECORD_HEAD

MAGIC = b"KPATCHVR"
VERSION = 1
LOG_NAME = "kpatch-var:sets"
LOG_PATH = "/memfd:" + LOG_NAME
LOG_SIZE = 64 << 10
SETTING, SET = "setting", "set"  # a set noted but perhaps not written yet (a patch-ctl killed there); done
STRING_LIMIT = 4096  # bytes of a string shown; longer ones are cut with "..."
STD_STRING = VarType(STDSTRING, 32, "std::string")  # libstdc++'s (the C++11 ABI)
# --type for a variable without DWARF: (kind, size or 0 for the symbol's, signed)
TYPES = {"int": (INT, 0, True), "uint": (INT, 0, False), "bool": (BOOL, 1, False), "float": (FLOAT, 4, False),
         "double": (FLOAT, 8, False)} | {f"{s}{8 * n}": (INT, n, s == "i") for s in "iu" for n in (1, 2, 4, 8)}


@dataclass
class VarSet:
    """One `var set`, as recorded in the target."""

    name: str  # the unambiguous spelling: "part_a.c:counter"
    object: str
    address: int
    type: str
    old: str  # hex of the bytes replaced
    new: str  # hex of the bytes written
    old_text: str
    new_text: str
    state: str
    when: float
    alloc: int = 0  # the block a `char *` set allocated in the target (left there by an undo)
    via: str = ""  # "gflags": set through gflags' SetCommandLineOption (`patch-ctl flags`); new is "" for
    # a string flag, whose std::string (at `address`) changes in place: its text is compared instead


@dataclass
class Found:
    """A variable resolved in the process."""

    name: str  # unambiguous spelling
    object: LoadedObject
    address: int  # runtime
    type: VarType


# ---- the record in the target ---------------------------------------------------------------------------

@dataclass
class SetLog:
    start: int  # 0: not mapped yet
    sets: list[VarSet]

    def encode(self) -> bytes:
        blob = json.dumps([asdict(v) for v in self.sets], separators=(",", ":")).encode()
        data = RECORD_HEAD.pack(MAGIC, VERSION, len(blob)) + blob
        if len(data) > LOG_SIZE:
            raise Refused([("var set", f"the target's record of sets is full ({len(self.sets)} sets): undo some")])
        return data


def read_log(maps: list[Mapping], mem: Memory) -> SetLog:
    """The sets recorded in the process (an empty log when there is none, or it is not one we can read)."""
    for m in maps:
        if m.path.startswith(LOG_PATH) and m.offset == 0:
            try:
                magic, version, length = RECORD_HEAD.unpack(mem.read(m.start, RECORD_HEAD.size))
                if magic != MAGIC or version != VERSION or RECORD_HEAD.size + length > min(LOG_SIZE, m.end - m.start):
                    continue
                raw = json.loads(mem.read(m.start + RECORD_HEAD.size, length))
                return SetLog(m.start, [VarSet(**v) for v in raw])
            except (OSError, ValueError, TypeError, struct.error):
                continue
    return SetLog(0, [])


def recorded_sets(pid: int) -> list[VarSet]:
    """The variable sets recorded in the process, oldest first (for `patch-ctl list`)."""
    with Memory(pid) as mem:
        return read_log(read_maps(pid), mem).sets


def ensure_log(s: Session, log: SetLog) -> None:
    """Map the record in the target, if it is not there yet."""
    if not log.start:
        log.start = in_target(s, lambda caller: caller.map_named(LOG_NAME, 0, LOG_SIZE))
        save_log(s, log)


def drop_log_if_empty(s: Session, log: SetLog) -> None:
    """Nothing left to undo: the record goes too."""
    if not log.sets and log.start:
        in_target(s, lambda caller: caller.munmap(log.start, LOG_SIZE))


def save_log(s: Session, log: SetLog) -> None:
    s.mem.write(log.start, log.encode())


def holds(mem: Memory, v: VarSet) -> bool:
    """True when the variable holds what `v` wrote."""
    if v.new:
        return mem.read(v.address, len(v.new) // 2).hex() == v.new
    return show_or_why(mem, STD_STRING, mem.read(v.address, STD_STRING.size)) == v.new_text


def _settle(s: Session, log: SetLog) -> None:
    """Finish what a killed patch-ctl left: a set noted but perhaps not written is kept if its new value
    is in place, dropped otherwise."""
    unsettled = [v for v in log.sets if v.state == SETTING]
    if not unsettled:
        return
    with s.stopped():
        for v in unsettled:
            if v.new:
                kept = holds(s.mem, v)
            elif v.old:  # a flag set through gflags, which wrote what it parsed: any change is that set
                now = s.mem.read(v.address, len(v.old) // 2).hex()
                kept, v.new = now != v.old, now
            else:  # a string flag
                now = show_or_why(s.mem, STD_STRING, s.mem.read(v.address, STD_STRING.size))
                kept, v.new_text = now != v.old_text, now
            if kept:
                v.state = SET
            else:
                log.sets.remove(v)
            s.stats.warnings.append(f"variable {v.name} was being set by an interrupted patch-ctl: "
                                    f"{'kept' if v.state == SET else 'not set'}")
        save_log(s, log)


# ---- finding variables ----------------------------------------------------------------------------------

def _split(spec: str) -> tuple[str, str]:
    """'file.c:name' -> ('file.c', 'name'); C++ '::' is not a file separator."""
    i = 0
    while True:
        i = spec.find(":", i)
        if i < 0:
            return "", spec
        if spec[i:i + 2] == "::":
            i += 2
            continue
        return spec[:i], spec[i + 1:]


def _dwarf_variables(s: Session) -> list[tuple[LoadedObject, Variable]]:
    return [(obj, v) for obj in s.objects for v in variables(obj.elf.dwarf())]


def _spelling(obj: LoadedObject, v: Variable, all_: list[tuple[LoadedObject, Variable]]) -> str:
    """The shortest name that finds only `v`: the name, else file:name, else object:name."""
    same = [(o, w) for o, w in all_ if w.qualified == v.qualified]
    if len(same) == 1:
        return v.qualified
    if sum(1 for _, w in same if w.file == v.file) == 1:
        return f"{v.file}:{v.qualified}"
    return f"{obj.name}:{v.qualified}"


def _symbols_named(obj: LoadedObject, name: str) -> list[tuple[str, ElfSymbol]]:
    """(source file, symbol) of each data symbol called `name`; the file (from the STT_FILE symbol that
    precedes a unit's locals) only for a static."""
    file, out = "", []
    for sym in obj.symtab or obj.dynsym:
        if sym.type == STT_FILE:
            file = sym.name
        elif sym.name == name and sym.type == STT_OBJECT and sym.shndx != SHN_UNDEF:
            out.append((file if sym.bind == STB_LOCAL else "", sym))
    return out


def _symbol_type(spec: str, size: int, type_name: str | None) -> VarType:
    if type_name is None:
        raise InputError(f"{spec}: no DWARF describes it: give its type with --type ({', '.join(sorted(TYPES))})")
    if type_name not in TYPES:
        raise InputError(f"--type {type_name}: not one of {', '.join(sorted(TYPES))}")
    kind, width, signed = TYPES[type_name]
    width = width or size
    if width != size or width not in (1, 2, 4, 8):
        raise Refused([(spec, f"the symbol is {size} bytes, --type {type_name} is {width}")])
    return VarType(kind, width, type_name, signed=signed)


def _runtime_address(s: Session, obj: LoadedObject, v: Variable) -> int:
    """Where the process keeps `v`. An exported variable of a library is the one the dynamic linker binds
    every reference to: the executable's copy of it (a copy relocation) when the executable has one."""
    if not v.static and obj is not s.objects[0] and v.symbol in obj.exports:
        bound = Resolver(s.objects, {}, s.mem).global_(v.symbol)
        if bound and bound[0]:
            return bound[0]
    return obj.base + v.address


def find(s: Session, spec: str, type_name: str | None = None) -> Found:
    """The one variable `spec` names, from DWARF or, in objects without DWARF, from the symbol tables (typed
    by `type_name`); InputError when none or several do."""
    where, name = _split(spec)
    if not name:
        raise InputError(f"{spec}: no variable name")
    all_ = _dwarf_variables(s)
    hits = [(o, v) for o, v in all_ if name in (v.qualified, v.name) and where in ("", v.file, o.name)]
    if len(hits) > 1:
        hits = [(o, v) for o, v in hits if v.qualified == name] or hits
    described = {o.path for o, _ in all_}
    syms = [(o, file, sym) for o in s.objects if o.path not in described
            for file, sym in _symbols_named(o, name) if where in ("", o.name, file)]
    if len(hits) + len(syms) > 1:
        names = [_spelling(o, v, all_) if not syms else f"{v.file}:{v.qualified}" for o, v in hits]
        names += [f"{file or o.name}:{sym.name}" for o, file, sym in syms]
        raise InputError(f"{spec}: ambiguous, {len(names)} variables have that name: {', '.join(sorted(names))}")
    if hits:
        obj, v = hits[0]
        return Found(_spelling(obj, v, all_), obj, _runtime_address(s, obj, v), v.type)
    if not syms:
        if any(sym.name == name and sym.type == STT_TLS for o in s.objects for sym in o.symtab or o.dynsym):
            raise Refused([(spec, "is thread-local (one per thread): not supported")])
        raise InputError(f"{spec}: no such variable in process {s.pid}")
    obj, file, sym = syms[0]
    return Found(f"{file}:{name}" if file else name, obj, obj.base + sym.value, _symbol_type(spec, sym.size, type_name))


# ---- values ---------------------------------------------------------------------------------------------

def _read_cstring(mem: Memory, addr: int) -> str:
    if addr == 0:
        return "NULL"
    text, complete = mem.read_cstring(addr, STRING_LIMIT)
    return text.decode("utf-8", "replace") + ("" if complete else "...")


def show(mem: Memory, t: VarType, data: bytes) -> str:
    """The value `data` (the variable's bytes) holds, as the user would write it."""
    if t.kind in (INT, ENUM, BOOL):
        n = int.from_bytes(data, "little", signed=t.signed)
        if t.kind == BOOL:
            return "true" if n else "false"
        if t.kind == ENUM:
            return next((k for k, v in sorted(t.enumerators.items()) if v == n), str(n))
        return str(n)
    if t.kind == FLOAT and t.size in (4, 8):
        return repr(struct.unpack("<f" if t.size == 4 else "<d", data)[0])
    if t.kind == CHARS:
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    if t.kind == CSTRING:
        return _read_cstring(mem, int.from_bytes(data, "little"))
    if t.kind == STDSTRING and t.size >= 16:  # libstdc++'s: pointer, then length
        ptr, length = struct.unpack_from("<QQ", data)
        text = mem.read(ptr, min(length, STRING_LIMIT)).decode("utf-8", "replace")
        return text + ("..." if length > STRING_LIMIT else "")
    return "0x" + data.hex() if t.size <= 64 else f"({t.size} bytes)"


def show_or_why(mem: Memory, t: VarType, data: bytes) -> str:
    """show(), or why not when a pointer leads nowhere readable."""
    try:
        return show(mem, t, data)
    except OSError:
        return "(unreadable)"


def _integer(spec: str, t: VarType, text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise InputError(f"{spec}: {text!r} is not an integer") from None
    lo, hi = (-(1 << (8 * t.size - 1)), (1 << (8 * t.size - 1)) - 1) if t.signed else (0, (1 << (8 * t.size)) - 1)
    if not lo <= n <= hi:
        raise Refused([(spec, f"{n} does not fit {t.name} ({lo}..{hi})")])
    return n


def encode(spec: str, t: VarType, text: str) -> bytes:
    """The bytes of `text` as a value of type `t`: InputError when it is not one, Refused when it does not
    fit or the type cannot be set this way."""
    if t.kind == INT:
        return _integer(spec, t, text).to_bytes(t.size, "little", signed=t.signed)
    if t.kind == BOOL:
        words = {"true": 1, "1": 1, "false": 0, "0": 0}
        if text.lower() not in words:
            raise InputError(f"{spec}: {text!r} is not a bool (true, false, 1, 0)")
        return words[text.lower()].to_bytes(t.size, "little")
    if t.kind == ENUM:
        if text in t.enumerators:
            n = t.enumerators[text]
        else:
            try:
                n = _integer(spec, t, text)
            except InputError:
                names = ", ".join(sorted(t.enumerators, key=lambda k: (t.enumerators[k], k)))
                raise InputError(f"{spec}: {text!r} is not an enumerator of {t.name} ({names})") from None
        return n.to_bytes(t.size, "little", signed=t.signed)
    if t.kind == FLOAT and t.size in (4, 8):
        try:
            x = float(text)
        except ValueError:
            raise InputError(f"{spec}: {text!r} is not a number") from None
        try:
            data = struct.pack("<f" if t.size == 4 else "<d", x)
        except OverflowError:
            raise Refused([(spec, f"{text} does not fit {t.name}")]) from None
        if t.size == 4 and math.isinf(struct.unpack("<f", data)[0]) and not math.isinf(x):
            raise Refused([(spec, f"{text} does not fit {t.name}")])
        return data
    if t.kind == CHARS:
        raw = text.encode()
        if len(raw) + 1 > t.size:
            raise Refused([(spec, f"{len(raw)} bytes and the terminating NUL do not fit {t.name}")])
        return raw + bytes(t.size - len(raw))
    if t.kind == STDSTRING:
        # Its own methods would free the old buffer while the program's threads may be reading it.
        raise Refused([(spec, "setting a std::string needs the target's own methods: not supported (read it "
                              "with var get; set a char array or char * instead)")])
    raise Refused([(spec, f"its type, {t.name}, is not one patch-ctl can set")])


# ---- the commands ---------------------------------------------------------------------------------------

def _writable(s: Session, f: Found) -> None:
    if f.type.const:
        raise Refused([(f.name, f"is {f.type.name}: read-only data is never written")])
    m = next((m for m in s.maps if f.address in m), None)
    if m is None or "w" not in m.perms:
        perms = m.perms if m else "unmapped"
        raise Refused([(f.name, f"lies in read-only memory ({perms}) of {f.object.name}: not written")])


def prepare(s: Session) -> SetLog:
    """The target's log of sets, with what an interrupted patch-ctl left of it settled (run inside
    loader.recovery's `changing`, which finishes what it left of patches first)."""
    log = read_log(s.maps, s.mem)
    _settle(s, log)
    return log


def take_back(s: Session, critical: Critical, log: SetLog, entry: VarSet, now: Callable[[], str],
              put_back: Callable[[], None], every_thread_stopped: bool = True) -> None:
    """Undo `entry`, the newest set of its variable: refused unless the variable still holds what that set
    gave it; then put_back() writes the old value and the entry is dropped (the log too, once empty). A
    direct write is checked and made with every thread stopped; a flag's goes through gflags, whose call
    stops one thread itself."""
    critical.safe_point()
    s.stats.attempts += 1
    with s.stopped() if every_thread_stopped else contextlib.nullcontext():
        if not holds(s.mem, entry):
            raise Refused([(entry.name, f"changed since it was set to {entry.new_text} (now {now()}): not undone")])
        put_back()
    log.sets.remove(entry)
    save_log(s, log)
    drop_log_if_empty(s, log)


def get_values(pid: int, spec: str, type_name: str | None = None) -> tuple[Found, str]:
    def get(s: Session):
        f = find(s, spec, type_name)
        with s.stopped():  # a consistent snapshot of a value wider than one word
            return f, show_or_why(s.mem, f.type, s.mem.read(f.address, f.type.size))

    return run(pid, "var get", get)


def list_values(pid: int, pattern: str | None) -> list[tuple[Found, str]]:
    """(variable, value) of every variable DWARF describes whose name (or file:name) matches `pattern`."""

    def listing(s: Session):
        all_ = _dwarf_variables(s)
        found = []
        for obj, v in all_:
            name = _spelling(obj, v, all_)
            if pattern is None or any(fnmatch.fnmatchcase(n, pattern) for n in (name, v.qualified, f"{v.file}:{v.qualified}")):
                found.append(Found(name, obj, _runtime_address(s, obj, v), v.type))
        out = []
        with s.stopped():
            for f in found:
                try:
                    out.append((f, show_or_why(s.mem, f.type, s.mem.read(f.address, f.type.size))))
                except OSError:
                    out.append((f, "(unreadable)"))
        return out

    return run(pid, "var list", listing)


def _allocate_string(s: Session, text: str, timeout: float) -> int:
    """A malloc'ed copy of `text` in the target (so that the program may free or realloc it), the call
    made by a thread stopped outside the allocator."""
    resolver = Resolver(s.objects, {}, s.mem)
    found = resolver.global_("malloc")
    if not found or not found[0]:
        raise Refused([("malloc", "the target has no malloc to allocate the string with")])
    raw = text.encode() + b"\0"
    clear = registry_of(s.objects, resolver, 0)  # the allocator's entry points to avoid

    def allocate(caller: RemoteCaller) -> int:
        return caller.call_function(found[0], len(raw))

    block = in_clear_thread(s, clear, allocate, timeout)
    if not block:
        raise Refused([("malloc", f"could not allocate {len(raw)} bytes in the target")])
    s.mem.write(block, raw)
    return block


def set_value(pid: int, spec: str, text: str, type_name: str | None = None,
              timeout: float = 10.0) -> tuple[VarSet, Stats]:
    def set_(s: Session):
        with changing(s, timeout) as critical:
            log = prepare(s)
            f = find(s, spec, type_name)
            _writable(s, f)
            alloc, new = 0, None if f.type.kind == CSTRING else encode(f.name, f.type, text)
            critical.safe_point()
            ensure_log(s, log)
            try:
                if new is None:
                    alloc = _allocate_string(s, text, timeout)
                    new = alloc.to_bytes(f.type.size, "little")
                critical.safe_point()  # from here the set completes
            except BaseException:
                drop_log_if_empty(s, log)
                raise
            s.stats.attempts += 1  # no stack to check: a data write never leaves a thread in mixed code
            with s.stopped():
                old = s.mem.read(f.address, f.type.size)
                entry = VarSet(f.name, f.object.name, f.address, f.type.name, old.hex(), new.hex(),
                               show_or_why(s.mem, f.type, old), text, SETTING, time.time(), alloc)
                log.sets.append(entry)
                save_log(s, log)
                faults.point("var-noted", s.pid)
                s.mem.write(f.address, new)
                faults.point("var-written", s.pid)
                entry.state, entry.new_text = SET, show_or_why(s.mem, f.type, new)
                save_log(s, log)
        return entry, s.stats

    return run(pid, "var set", set_, wait=timeout)


def undo_set(pid: int, spec: str, type_name: str | None = None, timeout: float = 10.0) -> tuple[VarSet, Stats]:
    """Put back the bytes the newest set of `spec` replaced, if the variable still holds what it wrote."""

    def undo(s: Session):
        with changing(s, timeout) as critical:
            log = prepare(s)
            mine = [v for v in log.sets if v.name == spec and not v.via]
            if not mine:
                f = find(s, spec, type_name)
                mine = [v for v in log.sets if v.address == f.address and not v.via]
            if not mine:
                raise InputError(f"{spec}: no set of it is recorded in process {s.pid}")
            entry = mine[-1]
            take_back(s, critical, log, entry, lambda: "0x" + s.mem.read(entry.address, len(entry.new) // 2).hex(),
                      lambda: s.mem.write(entry.address, bytes.fromhex(entry.old)))
        return entry, s.stats

    return run(pid, "var undo", undo, wait=timeout)
