"""gflags in a running process: list its flags, read them, and set them through gflags' own
`SetCommandLineOption` called in the target, so that validators run and the flag counts as modified.

A gflags program is one where an object exports SetCommandLineOption. Its flags are the globals gflags'
DEFINE_* macros make, `fLI::FLAGS_port` and the like: the namespace gives the type (fLS's is a reference
to the std::string). Each set is recorded with `var set`'s (loader.variables), marked `via: gflags`, and
undone by setting the old value back the same way.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from patch_build.common.errors import InputError, Refused
from patch_build.elfcore.constants import SHN_UNDEF, STB_LOCAL
from patch_build.loader import faults
from patch_build.loader.dwarftypes import BOOL, FLOAT, INT, VarType
from patch_build.loader.frames import registry_of
from patch_build.loader.objects import LoadedObject
from patch_build.loader.recovery import changing
from patch_build.loader.session import Session, Stats, in_clear_thread, run
from patch_build.loader.remote import RemoteCaller
from patch_build.loader.resolve import Resolver
from patch_build.loader.variables import (SET, SETTING, STD_STRING, VarSet, drop_log_if_empty, ensure_log, prepare, save_log,
                              show_or_why, take_back)

VIA = "gflags"
_SETTER = re.compile(r"_ZN(6google|6gflags)20SetCommandLineOption(B5cxx11)?EPKcS1_")
# DEFINE_* namespace -> the flag's type; fLS: a reference (pointer) to a std::string
_TYPES = {"fLI": VarType(INT, 4, "int32", signed=True), "fLI64": VarType(INT, 8, "int64", signed=True),
          "fLU": VarType(INT, 4, "uint32"), "fLU64": VarType(INT, 8, "uint64"), "fLB": VarType(BOOL, 1, "bool"),
          "fLD": VarType(FLOAT, 8, "double"), "fLS": STD_STRING}
_SCRATCH = 2048  # the call's strings and result go this far below the thread's stack pointer
_VALUE_LIMIT = 1024  # bytes of a value: they must fit between there and the called function's stack


@dataclass
class Flag:
    name: str  # "port"
    type: VarType
    address: int  # of FLAGS_port (for a string flag, of the reference)
    object: LoadedObject


def _setter(s: Session) -> int:
    for obj in s.objects:
        for name, sym in obj.exports.items():
            if _SETTER.fullmatch(name):
                return obj.base + sym.value
    raise InputError(f"process {s.pid} does not use gflags (no object exports SetCommandLineOption)")


def _flag_symbol(symbol: str) -> tuple[str, str] | None:
    """('fLI', 'port') of `_ZN3fLI10FLAGS_portE` (a string flag's carries the ABI tag B5cxx11)."""
    parts, i = [], 3
    if not symbol.startswith("_ZN"):
        return None
    for _ in range(2):
        m = re.match(r"\d+", symbol[i:])
        if not m:
            return None
        i += len(m[0])
        parts.append(symbol[i:i + int(m[0])])
        i += int(m[0])
    if symbol[i:] not in ("E", "B5cxx11E") or not parts[1].startswith("FLAGS_"):
        return None
    return parts[0], parts[1].removeprefix("FLAGS_")


def _flags(s: Session) -> dict[str, Flag]:
    """The flags the process defines, from its symbol tables, by name."""
    out: dict[str, Flag] = {}
    for obj in s.objects:
        for sym in obj.symtab or obj.dynsym:
            parsed = _flag_symbol(sym.name) if sym.bind != STB_LOCAL and sym.shndx != SHN_UNDEF else None
            if parsed and parsed[0] in _TYPES:
                out.setdefault(parsed[1], Flag(parsed[1], _TYPES[parsed[0]], obj.base + sym.value, obj))
    return dict(sorted(out.items()))


def _where(s: Session, flag: Flag) -> int:
    """The address of the flag's value: a string flag's std::string, through its reference."""
    return s.mem.read_u64(flag.address) if flag.type is STD_STRING else flag.address


def _value(s: Session, flag: Flag) -> str:
    return show_or_why(s.mem, flag.type, s.mem.read(_where(s, flag), flag.type.size))


def _find(s: Session, name: str) -> Flag:
    flags = _flags(s)
    flag = flags.get(name.removeprefix("--").removeprefix("FLAGS_"))
    if flag is None:
        raise InputError(f"{name}: no such flag in process {s.pid} ({len(flags)} flags: see flags list)")
    return flag


def list_flags(pid: int) -> list[tuple[Flag, str]]:
    def listing(s: Session):
        _setter(s)
        with s.stopped():
            return [(f, _value(s, f)) for f in _flags(s).values()]

    return run(pid, "flags list", listing)


def get_flag(pid: int, name: str) -> str:
    def get(s: Session):
        _setter(s)
        flag = _find(s, name)
        with s.stopped():
            return _value(s, flag)

    return run(pid, "flags get", get)


def _call_setter(s: Session, setter: int, name: str, value: str, timeout: float) -> str:
    """SetCommandLineOption(name, value) run in the target by a thread stopped outside gflags and the
    allocator (whose locks it might hold); its message ("" when gflags refused)."""
    raw_name, raw_value = name.encode() + b"\0", value.encode() + b"\0"
    if len(raw_value) > _VALUE_LIMIT or len(raw_name) > _VALUE_LIMIT:
        raise Refused([(name, f"values longer than {_VALUE_LIMIT} bytes are not passed")])
    resolver = Resolver(s.objects, {}, s.mem)
    clear = registry_of(s.objects, resolver, setter)  # gflags' library, and the allocator's entry points
    delete = resolver.global_("_ZdlPv")  # operator delete: frees the message when it did not fit inline

    def call(caller: RemoteCaller) -> str:
        result = (caller.saved.rsp - _SCRATCH) & ~15  # the returned std::string (the ABI's hidden pointer)
        s.mem.write(result, bytes(STD_STRING.size) + raw_name + raw_value)
        name_at = result + STD_STRING.size
        caller.call_function(setter, result, name_at, name_at + len(raw_name))
        data = s.mem.read(result, STD_STRING.size)
        message = show_or_why(s.mem, STD_STRING, data)
        buffer = int.from_bytes(data[:8], "little")
        if buffer != result + 16 and delete and delete[0]:
            caller.call_function(delete[0], buffer)
        return message

    return in_clear_thread(s, clear, call, timeout)


def _through_gflags(s: Session, flag: Flag, setter: int, value: str, timeout: float) -> None:
    message = _call_setter(s, setter, flag.name, value, timeout)
    if not message:
        raise Refused([(f"--{flag.name}", f"gflags refused the value {value!r} (not a valid {flag.type.name}, "
                                          "or its validator said no)")])


def set_flag(pid: int, name: str, value: str, timeout: float = 10.0) -> tuple[VarSet, Stats]:
    def set_(s: Session):
        with changing(s, timeout) as critical:
            log = prepare(s)
            setter, flag = _setter(s), _find(s, name)
            critical.safe_point()
            ensure_log(s, log)
            where = _where(s, flag)
            critical.safe_point()  # from here the set completes
            old = s.mem.read(where, flag.type.size)
            entry = VarSet(f"--{flag.name}", flag.object.name, where, flag.type.name, "" if flag.type is STD_STRING
                           else old.hex(), "", show_or_why(s.mem, flag.type, old), value, SETTING, time.time(),
                           via=VIA)
            log.sets.append(entry)
            save_log(s, log)
            try:
                _through_gflags(s, flag, setter, value, timeout)
            except BaseException:
                log.sets.remove(entry)
                save_log(s, log)
                drop_log_if_empty(s, log)
                raise
            faults.point("flag-set", s.pid)
            new = s.mem.read(where, flag.type.size)
            entry.state, entry.new_text = SET, show_or_why(s.mem, flag.type, new)
            entry.new = "" if flag.type is STD_STRING else new.hex()
            save_log(s, log)
        return entry, s.stats

    return run(pid, "flags set", set_, wait=timeout)


def undo_flag(pid: int, name: str, timeout: float = 10.0) -> tuple[VarSet, Stats]:
    """Set the flag back, through gflags, to the value the newest `flags set` of it replaced, if it still
    holds what that set gave it."""

    def undo(s: Session):
        with changing(s, timeout) as critical:
            log = prepare(s)
            setter, flag = _setter(s), _find(s, name)
            mine = [v for v in log.sets if v.via == VIA and v.name == f"--{flag.name}"]
            if not mine:
                raise InputError(f"--{flag.name}: no flags set of it is recorded in process {s.pid}")
            entry = mine[-1]
            take_back(s, critical, log, entry, lambda: _value(s, flag),
                      lambda: _through_gflags(s, flag, setter, entry.old_text, timeout), every_thread_stopped=False)
        return entry, s.stats

    return run(pid, "flags undo", undo, wait=timeout)
