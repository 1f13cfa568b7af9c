"""`patch-ctl daemon` and `patch-ctl status`: installed patches (loader.store) kept applied in every process
whose program or library they target, and what each process carries.

The daemon first subscribes to the kernel's process-event connector (netlink, CAP_NET_ADMIN), so that no
exec is missed, and opens its exec gate (loader.execgate: fanotify exec permission events, CAP_SYS_ADMIN),
then applies what matches to every process already running, then to each process that execs. An exec of a
program that an installed patch targets waits for the daemon: the process is seized before its exec goes
on, stops at the exec and is held at its program's entry point while the patch is applied (loader.entry),
so that its main runs patched from the first line, always. A shared library is not exec'd: the files of
the libraries that patches target are marked at the gate (found by build-id where the dynamic linker looks
by default, loader.libpaths, and among the files the processes the daemon looks at map), and a process
whose dynamic linker opens one at its start is held the same way. Without the gate (an older kernel, no
CAP_SYS_ADMIN: said in the log), a new process is stopped when the connector's event comes, asynchronously:
still in the dynamic linker, it is held at its entry point the same way; already past it, it is let go and
patched once the dynamic linker has mapped the libraries it needs (polled through /proc/PID/maps), as it
runs (it may serve its first requests unpatched). With the gate, a process it did not hold is patched that
way too, as it runs (a copy of a library in a directory of its own, seen for the first time).
A process is matched by the GNU build-ids of the objects it has mapped (`Store.for_build_id`); each module is
verified (`Store.verify`) before each apply. Whatever the outcome it logs one line to stdout (the journal,
under systemd) and moves on: a patch that cannot be applied leaves that process running unpatched, and no
process waits for the daemon longer than an apply takes. The store is read again whenever it changed, so an
install or uninstall takes effect for the next process to start.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from patch_build.common.interrupts import Interrupted
from patch_build.common.errors import InputError, PatchBuildError
from patch_build.elfcore import notes
from patch_build.elfcore.constants import ELFMAG
from patch_build.elfcore.elffile import ElfFile
from patch_build.loader.apply import apply_patch
from patch_build.loader.entry import at_entry
from patch_build.loader.execgate import ExecGate, Handoff
from patch_build.loader.fanotify import Unavailable
from patch_build.loader.libpaths import cache_key, library_paths
from patch_build.loader.procfs import Mapping, Memory, read_maps, tracer_of
from patch_build.loader.ptrace import ThreadGone
from patch_build.loader.state import MAPPING_PREFIX, PatchRecord, find_patches
from patch_build.loader.store import Installed, Store

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 0x2
NLMSG_DONE = 3
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, port id
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, length, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp (ns); then the event's own fields
_EXEC = struct.Struct("=II")  # process pid, process tgid
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it
RECEIVE_BUFFER = 8 << 20  # bytes of events held while the daemon is busy applying (~100,000 execs)
SETTLE_POLL = 0.005  # seconds between two looks at a new process's maps
SETTLE_LIMIT = 1.0  # after this long, a process is patched whatever it has mapped


class ExecEvents:
    """The kernel's process-event connector: the thread-group id of each process that calls exec."""

    def __init__(self):
        self.lost = False  # events were dropped (the socket's buffer overflowed): every process is looked at
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            self.sock.bind((0, CN_IDX_PROC))
            body = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0) + struct.pack("=I", PROC_CN_MCAST_LISTEN)
            self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), NLMSG_DONE, 0, 0, 0) + body)
        except PermissionError:
            raise PatchBuildError("the kernel's process events need CAP_NET_ADMIN: run the daemon as root") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[int]:
        """The processes that exec'd, from every message the socket holds now. An overflow (ENOBUFS: events
        were lost) sets `lost`, for a rescan."""
        pids = []
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return pids
            except OSError:
                self.lost = True
                return pids
            pids += _exec_events(data)

    def close(self) -> None:
        self.sock.close()


def _exec_events(data: bytes) -> list[int]:
    """The thread-group ids of the exec events in one netlink datagram."""
    pids, at = [], 0
    while at + _NLMSG.size <= len(data):
        length = _NLMSG.unpack_from(data, at)[0]
        body = at + _NLMSG.size + _CN_MSG.size
        if length < _NLMSG.size or body + _EVENT.size + _EXEC.size > len(data):
            break
        if _EVENT.unpack_from(data, body)[0] == PROC_EVENT_EXEC:
            pids.append(_EXEC.unpack_from(data, body + _EVENT.size)[1])
        at += (length + 3) & ~3
    return pids


def processes() -> list[int]:
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit())


@dataclass
class _Starting:
    since: float
    maps: int = -1  # the number of mappings last seen: settled once it stops growing
    late_load: bool = False  # it opened a targeted library after its start: settled once it maps one


class Daemon:
    """What the daemon knows between two events: processes waiting for their libraries, build-ids read."""

    def __init__(self, store: Store, timeout: float, log: Callable[[str], None], only: list[str] | None = None):
        self.store, self.timeout, self.log, self.only = store, timeout, log, only
        self.starting: dict[int, _Starting] = {}
        self.build_ids: dict[tuple[str, int], str] = {}  # (path, inode) -> build-id
        self.programs: dict[tuple[str, int], tuple[bool, int]] = {}  # (path, inode) -> _program()
        self.exe_build_ids: dict[tuple[int, int], str] = {}  # (device, inode) -> build-id
        self.user: list[Installed] = []  # _user_entries(), as of the store's index `index_key`
        self.index_key: tuple | None = None
        self.entries_lock = threading.Lock()  # _user_entries() is also the exec gate's (its own thread)
        self.gate: ExecGate | None = None
        self.marked: set[tuple[str, int]] = set()  # (path, inode) of the library files marked at the gate
        self.libraries_key: tuple | None = None  # (library targets, the linker's cache) when they were looked for
        self.exec_held: Counter[int] = Counter()  # pid -> its execs held by the gate whose connector event is
        # still to come (to be ignored: the process is patched already)

    def _build_ids(self, pid: int, maps) -> dict[str, Mapping]:
        """build-id -> the first mapping of each ELF file the process maps, read once per file (path, inode)."""
        out = {}
        for m in maps:
            if not m.path.startswith("/") or not m.inode:
                continue
            key = (m.path, m.inode)
            if key not in self.build_ids:
                self.build_ids[key] = ""
                path = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
                try:
                    with open(path, "rb") as f:
                        elf = f.read(4) == ELFMAG
                    if elf:  # its notes only: the daemon looks at every file every new process maps
                        self.build_ids[key] = notes.build_id_of(path) or ""
                except (OSError, InputError):
                    pass
            if self.build_ids[key]:
                out.setdefault(self.build_ids[key], m)
        return out

    def _program(self, pid: int, maps) -> tuple[bool, int]:
        """(dynamically linked, DT_NEEDED entries) of the process's program, read once per file."""
        exe = os.readlink(f"/proc/{pid}/exe")
        first = next(m for m in maps if m.path == exe)
        key = (exe, first.inode)
        if key not in self.programs:
            with ElfFile(f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}") as elf:
                self.programs[key] = (elf.interpreted(), len(elf.needed()))
        return self.programs[key]

    def _settled(self, pid: int, state: _Starting) -> bool:
        """The dynamic linker has mapped the libraries the program needs (as many files besides the program
        and the linker as it has DT_NEEDED entries; after a late load, a targeted library), the mappings
        stopped growing and no one traces it; or it is late."""
        maps = read_maps(pid)
        if time.monotonic() - state.since > SETTLE_LIMIT:
            return True
        if tracer_of(pid):
            return False  # held by another (the daemon of another package, at its entry point): for a while
        grown, state.maps = len(maps) != state.maps, len(maps)
        if state.late_load:
            return not grown and bool(self._library_targets().keys() & self._build_ids(pid, maps).keys())
        dynamic, needed = self._program(pid, maps)
        files = {m.path for m in maps if m.path.startswith("/") and m.inode}
        return not dynamic or (len(files) - 2 >= needed and not grown)

    def _user_entries(self) -> list[Installed]:
        """The installed user-space patches (of `only`), read again whenever the store's index has changed
        (its inode, size, modification or status change time): a look that costs microseconds, not the
        index's parsing, between a process's exec and its stop."""
        with self.entries_lock:
            return self._read_entries()

    def _read_entries(self) -> list[Installed]:
        try:
            st = os.stat(self.store.index)
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            key = None
        if key != self.index_key or key is None:
            self.user = [e for e in self.store.entries()
                         if e.kind == "user" and (not self.only or e.name in self.only)]
            self.index_key = key
        return self.user

    def _library_targets(self) -> dict[str, str]:
        """build-id -> name of each target of an installed patch that is a shared library."""
        return {t["build_id"]: t["name"] for e in self._user_entries() for t in e.targets if ".so" in t["name"]}

    def _may_need(self, pid: int, libraries: bool = True) -> bool:
        """Whether a new process may need an installed patch: its program is a target, or (`libraries`) a
        patch targets a shared library (which any program may map)."""
        entries = self._user_entries()
        if libraries and self._library_targets():
            return True
        st = os.stat(f"/proc/{pid}/exe")
        key = (st.st_dev, st.st_ino)
        if key not in self.exe_build_ids:
            self.exe_build_ids[key] = notes.build_id_of(f"/proc/{pid}/exe") or ""
        return any(t["build_id"] == self.exe_build_ids[key] for e in entries for t in e.targets)

    def targets(self) -> set[str]:
        """The build-ids the installed user patches target (the exec gate holds the execs of these files)."""
        return {t["build_id"] for e in self._user_entries() for t in e.targets}

    def mark_libraries(self) -> None:
        """Mark at the gate the files of the targeted libraries where the dynamic linker looks by default,
        whenever the targets or its cache changed (the files that processes map are marked as they are seen:
        `patch`)."""
        if self.gate is None:
            return
        targets = self._library_targets()
        key = (sorted(targets.items()), cache_key())
        if key == self.libraries_key:
            return
        self.libraries_key = key
        for path in library_paths(set(targets.values())):
            try:
                real = os.path.realpath(path)
                if (real, os.stat(real).st_ino) not in self.marked and notes.build_id_of(real) in targets:
                    self._mark(real, real, os.stat(real).st_ino)
            except (OSError, InputError):
                continue  # gone meanwhile, or not ELF: not the library

    def _mark(self, path: str, shown: str, inode: int) -> None:
        """Mark one library file at the gate (`path`: a name of it; `shown`: its path, for the log)."""
        self.marked.add((shown, inode))
        try:
            self.gate.mark_library(path)
        except OSError as e:
            self.log(f"exec gate: library {shown} not marked ({e.strerror}): its new processes are patched as "
                     "they run")
            return
        self.log(f"exec gate: library {shown} marked: a new process that loads it is held at its start")

    def serve_gate(self) -> None:
        """Each exec (or library open) the gate hands over: stopped there, patched at its entry point, let go."""
        if self.gate is None:
            return
        for handoff in self.gate.take():
            self.held_from_gate(handoff)
        for pid in sorted(self.gate.late_loads()):
            if pid != os.getpid():
                self.starting.setdefault(pid, _Starting(time.monotonic(), late_load=True))

    def held_from_gate(self, handoff: Handoff) -> None:
        try:
            if handoff.exec:
                hold = at_entry(handoff.pid, lambda: True, at_exec=handoff.allow)
            else:
                hold = at_entry(handoff.pid, lambda: True, at_open=handoff.allow)
            with hold as held:
                if held:
                    if handoff.exec:  # its connector event is still to come (a library's open comes after it)
                        self.exec_held[handoff.pid] += 1
                    self.patch(handoff.pid, handoff.since, held=True)
        finally:
            handoff.done()

    def started(self, pid: int) -> None:
        """A process exec'd (the connector's event): stopped at once (the sooner, the likelier it is still
        in the dynamic linker), then patched at its entry point if it may need a patch (loader.entry); else,
        or if it is already past its entry point, once its libraries are mapped (`poll`). With the exec gate,
        a process it held is done already, and one that needs no patch is not stopped at all."""
        if pid == os.getpid():
            return
        if self.exec_held[pid]:
            self.exec_held[pid] -= 1
            if not self.exec_held[pid]:
                del self.exec_held[pid]
            return
        since = time.monotonic()
        if not self._user_entries():
            return  # nothing to apply: the process is not stopped
        self.mark_libraries()

        def wanted() -> bool:
            try:
                return self._may_need(pid, libraries=self.gate is None)
            except (OSError, ValueError, InputError):
                return False

        if self.gate is not None and not wanted():
            # The gate holds the programs that patches target, and the starts that open a marked library;
            # a process that maps a targeted library the gate did not hold is patched as it runs.
            if self._library_targets():
                self.starting[pid] = _Starting(since)
            return
        with at_entry(pid, wanted) as held:
            if held:
                self.patch(pid, since, held=True)
                return
        self.starting[pid] = _Starting(since)

    def poll(self) -> float:
        """Patch the starting processes that are ready; the seconds until the next look is due."""
        for pid, state in list(self.starting.items()):
            try:
                ready = self._settled(pid, state)
            except (OSError, ThreadGone, InputError, StopIteration):
                ready = True  # gone (then nothing is done), or unreadable: tried as it is
            if ready:
                del self.starting[pid]
                self.patch(pid, None if state.late_load else state.since)
        return SETTLE_POLL if self.starting else 1.0

    def patch(self, pid: int, since: float | None = None, held: bool = False) -> None:
        """Apply to `pid` each installed patch that targets an object it has mapped and it does not carry;
        `since`: when its exec was seen (time.monotonic()), `held`: it is stopped at its entry point; both
        for the log."""
        try:
            maps = read_maps(pid)
            mapped = self._build_ids(pid, maps)
            if self.gate is not None:
                for build_id in sorted(self._library_targets().keys() & mapped.keys()):
                    m = mapped[build_id]
                    if (m.path, m.inode) not in self.marked:
                        self._mark(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", m.path, m.inode)
            wanted = {e.name: e for e in self._user_entries() if any(t["build_id"] in mapped for t in e.targets)}
            if not wanted:
                return
            with Memory(pid) as mem:
                carried = {r.module for r in find_patches(maps, mem)}
            program = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except (OSError, ThreadGone, InputError):
            return  # gone, or a kernel thread
        for name, entry in sorted(wanted.items()):
            if name in carried:
                continue
            try:
                record, stats = apply_patch(pid, str(self.store.verify(entry)), self.timeout)
            except Interrupted:
                raise
            except PatchBuildError as e:
                if not os.path.exists(f"/proc/{pid}"):
                    return  # exited meanwhile: nothing to say
                self.log(f"not applied {name} to process {pid} ({program}), left running unpatched: {e}")
                continue
            after = f", {(time.monotonic() - since) * 1000:.0f} ms after its exec" if since is not None else ""
            after += ", at its entry point" if held else ""
            self.log(f"applied {name} to process {pid} ({program}): {len(record.funcs)} function(s) redirected, "
                     f"pause {stats.pause * 1000:.2f} ms{after}")
            for warning in stats.warnings:
                self.log(f"warning: process {pid}: {warning}")


def run_daemon(store: Store, timeout: float, log: Callable[[str], None], only: list[str] | None = None) -> None:
    """Until SIGINT/SIGTERM/SIGHUP: the running processes first, then each one that starts; `only`: these
    installed patches (by name), not all."""
    store.entries()  # a store that cannot be read is an error at once, not a line per process
    events = ExecEvents()
    daemon = Daemon(store, timeout, log, only)
    try:
        try:
            daemon.gate = ExecGate(daemon.targets, log)
            log(f"exec gate open on {daemon.gate.filesystems} filesystem(s): a new process of a targeted program "
                "is held from its exec until patched")
        except Unavailable as e:
            log(f"exec gate unavailable ({e}): new processes are seen through the process-event connector "
                "only, and one may start running before it is patched")
        daemon.mark_libraries()
        for pid in processes():
            if pid != os.getpid():
                daemon.patch(pid)
            daemon.serve_gate()  # a targeted exec meanwhile waits no longer than a process's look
        which = ", ".join(only) if only else f"{len(store.entries())} patch(es) installed"
        log(f"running processes done; watching for new ones to patch from {store.root} ({which})")
        wait = 1.0
        watched = [events] if daemon.gate is None else [daemon.gate, events]
        while True:
            ready, _, _ = select.select(watched, [], [], wait)
            if daemon.gate in ready:
                daemon.serve_gate()
            if events in ready:
                for pid in events.read():
                    daemon.started(pid)
            if events.lost:
                events.lost = False
                daemon.exec_held.clear()
                log("process events were lost (too many at once): looking at every process again")
                for pid in processes():
                    daemon.patch(pid)
            wait = daemon.poll()
    except Interrupted as e:
        e.reported = True  # a stop asked for, not a failure: the command ends normally (exit 0)
        log(f"stopped by {e}")
    finally:
        if daemon.gate is not None:
            daemon.gate.close()
        events.close()


def carried_patches() -> list[tuple[int, str, list[PatchRecord]]]:
    """(pid, program, patches) of every process that carries a patch, by pid."""
    out = []
    for pid in processes():
        try:
            maps = read_maps(pid)
            if not any(m.path.startswith(MAPPING_PREFIX) for m in maps):
                continue
            with Memory(pid) as mem:
                records = find_patches(maps, mem)
            program = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except (OSError, ThreadGone, InputError):
            continue  # exited meanwhile
        if records:
            out.append((pid, program, records))
    return out
