"""`patch-ctl apply -p PID NAME.gopatch`: a live fix into a running Go program (issue 16; docs/go.md).

The program's agent (go/agent) loads the fix's plugin with plugin.Open, so the Go runtime knows its code;
then, every thread stopped, each replaced function's stack-bound check is overwritten with a jmp to a stub
mapped near the program, which jumps on to the plugin's version. The patch is recorded in the target as a
C patch is (loader.state: a `kpatch:NAME` mapping holding the record and the stubs), so `list` and `revert`
are the C ones: a revert puts the checks back and unmaps the stubs; the plugin stays loaded (Go cannot
unload one), unused. A re-apply of the same patch finds it loaded.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time

from patch_build.common.errors import InputError, Refused
from patch_build.loader import layout, x86_64 as arch
from patch_build.loader.jumps import commit
from patch_build.loader.placement import free_addresses_near, map_near
from patch_build.loader.procfs import check_process
from patch_build.loader.recovery import changing
from patch_build.loader.remote import PROT_EXEC, PROT_READ, RemoteCaller
from patch_build.loader.session import Session, Stats, in_target, run
from patch_build.loader.state import PENDING, PatchedFunc, PatchRecord, current_patches
from patch_build.loader.undo import discard
from patch_build.patchformat.gobinary import GoBinary, NotGo, stack_check_size
from patch_build.patchformat.gopatch import BadGoPatch, GoPatch, read_gopatch

AGENT_TIMEOUT = 60.0  # plugin.Open runs the plugin's package initialisation
MAX_ANSWER = 4096
BIND_SIZE = 14  # jmp *0(%rip) + address: a plugin copy bound back to the program's function
HEADER_ROOM = 64 << 10  # the record at the head of the stubs mapping


def load_gopatch(path: str) -> tuple[GoPatch, bytes]:
    try:
        return read_gopatch(path)
    except BadGoPatch as e:
        raise InputError(str(e)) from None


def agent_dir(pid: int) -> str:
    """Where the program's agent listens: os.TempDir() of the program ($TMPDIR, else /tmp)."""
    tmp = "/tmp"
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read(1 << 20).split(b"\0"):
                if entry.startswith(b"TMPDIR=") and len(entry) > 7:
                    tmp = entry[7:].decode(errors="replace")
    except OSError:
        pass
    return os.path.join(f"/proc/{pid}/root", tmp.lstrip("/"), f"patchbuild-go.{pid}")


def ask_agent(pid: int, directory: str, plugin: str) -> None:
    """Have the agent of `pid` plugin.Open `plugin` (its path as the program sees it)."""
    sock_path = os.path.join(directory, "agent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(AGENT_TIMEOUT)
        try:
            sock.connect(sock_path)
            sock.sendall(f"open {plugin}\n".encode())
            answer = b""
            while not answer.endswith(b"\n") and len(answer) < MAX_ANSWER:
                chunk = sock.recv(MAX_ANSWER)
                if not chunk:
                    break
                answer += chunk
        except OSError as e:
            raise Refused([(f"process {pid}", f"its patch-build agent did not answer ({sock_path}: "
                                              f"{e.strerror or e})")]) from None
    text = answer.decode(errors="replace").strip()
    if text != "ok":
        raise Refused([(f"process {pid}", f"the program could not load the fix: {text.removeprefix('error: ')}")])


def _place_plugin(pid: int, directory: str, name: str, plugin: bytes) -> tuple[str, str]:
    """Write the plugin into the agent's directory, owned by the program's user (so the program may read it);
    (path for us, path as the program sees it). The directory must be the program user's own, not a link
    (we are root: a link would have us write elsewhere). The file is named by its contents: the runtime
    keeps a plugin by path, and one already there is the program's (it may have it loaded)."""
    digest = hashlib.sha256(plugin).hexdigest()
    name = f"{name}-{digest[:16]}"
    ours = os.path.join(directory, f"{name}.so")
    inside = ours.split("/root", 1)[1] if ours.startswith("/proc/") else ours
    owner = os.stat(f"/proc/{pid}").st_uid
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(dfd)
        if st.st_uid != owner or st.st_mode & 0o077:
            raise Refused([(f"process {pid}", f"{directory}: not the agent's directory (owner {st.st_uid}, "
                                              f"mode {st.st_mode & 0o777:o}; the program runs as {owner})")])
        try:
            fd = os.open(f"{name}.so", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                if hashlib.sha256(f.read(len(plugin) + 1)).hexdigest() == digest:
                    return ours, inside
        except OSError:
            pass
        tmp = f"{name}.so.tmp"
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o500, dir_fd=dfd)
        with os.fdopen(fd, "wb") as f:
            f.write(plugin)
            os.fchown(f.fileno(), st.st_uid, st.st_gid)
        os.replace(tmp, f"{name}.so", src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)
    return ours, inside


def apply_gopatch(pid: int, path: str, timeout: float = 10.0) -> tuple[PatchRecord, Stats]:
    check_process(pid)
    patch, plugin = load_gopatch(path)
    return run(pid, "apply", lambda s: _apply(s, patch, plugin, path, timeout), wait=timeout)


def _check_program(s: Session, patch: GoPatch) -> GoBinary:
    exe = f"/proc/{s.pid}/exe"
    try:
        program = GoBinary(exe)
    except NotGo as e:
        raise Refused([(f"process {s.pid}", f"not a Go program this patch can fix ({e})")]) from None
    try:
        build_id, version = program.build_id() or "", program.go_version()
    except NotGo as e:
        raise Refused([(f"process {s.pid}", str(e))]) from None
    want = patch.target
    if build_id != want.get("build_id") or version != want.get("go_version"):
        raise Refused([(f"process {s.pid}", f"runs another build: {os.path.basename(os.readlink(exe))} build-id "
                                            f"{build_id or 'none'} ({version}); {patch.name} is for "
                                            f"{want.get('name')} build-id {want.get('build_id')} "
                                            f"({want.get('go_version')})")])
    return program


def _apply(s: Session, patch: GoPatch, plugin: bytes, path: str, timeout: float):
    directory = agent_dir(s.pid)
    if not os.path.exists(os.path.join(directory, "agent.sock")):
        raise Refused([(f"process {s.pid}", "no patch-build agent in the program (it must import "
                                            f"patchbuild.local/go/agent; {directory}/agent.sock is missing)")])
    program = _check_program(s, patch)
    with changing(s, timeout) as critical:
        if any(r.module == patch.name for r in s.patches):
            raise Refused([(patch.name, f"already applied in process {s.pid} (revert it first)")])
        exe_path = os.readlink(f"/proc/{s.pid}/exe")
        exe = next((o for o in s.objects if o.path == exe_path), None)
        if exe is None:
            raise Refused([(f"process {s.pid}", f"its program {exe_path} is not mapped (replaced on disk?)")])
        current = current_patches(s.patches)
        olds = []
        for f in patch.funcs:
            sym = program.functions.get(f.name)
            if sym is None:
                raise Refused([(f.name, "not in the program's symbol table")])
            addr, code = exe.base + sym.addr, program.code(f.name)
            if stack_check_size(code[:32]) < arch.JMP_REL32_SIZE:
                raise Refused([(f.name, "too small for the jump: it does not start with a stack-bound check")])
            now = s.mem.read(addr, arch.JMP_REL32_SIZE)
            if addr not in current and now != code[:arch.JMP_REL32_SIZE]:
                raise Refused([(f.name, "its code in the process is not the program's (changed by another tool?)")])
            olds.append((f, addr, sym.size, now))

        critical.safe_point()
        ours, inside = _place_plugin(s.pid, directory, patch.name, plugin)
        built = GoBinary(ours)  # checked before the program loads it
        missing = [f.new for f, _, _, _ in olds if f.new not in built.functions]
        if missing:
            raise InputError(f"{path}: malformed .gopatch: its plugin has no {missing[0]}")
        new_offsets = [built.functions[f.new].addr for f, _, _, _ in olds]
        bind_offsets = [(built.functions[b.copy].addr, exe.base + program.functions[b.host].addr)
                        for b in patch.binds if b.copy in built.functions and b.host in program.functions]
        ask_agent(s.pid, directory, inside)
        s.refresh()
        loaded = [o for o in s.objects if o.path.removesuffix(" (deleted)") == inside]
        if not loaded:
            raise Refused([(patch.name, f"the program says it loaded {inside}, but it is not mapped")])
        plugin_base = loaded[0].base
        new_addrs = [plugin_base + offset for offset in new_offsets]
        binds = [(plugin_base + offset, host) for offset, host in bind_offsets]
        _bind(s, binds)

        seq = max((r.seq for r in s.patches), default=0) + 1
        stubs_at = layout.align(HEADER_ROOM, layout.PAGE)
        size = stubs_at + layout.align(len(olds) * arch.STUB_SIZE, layout.PAGE)
        anchors = [addr for _, addr, _, _ in olds]
        candidates = free_addresses_near(s.maps, size, [min(anchors), max(anchors)])
        record, base = None, 0
        try:
            def map_stubs(caller: RemoteCaller) -> None:
                nonlocal base
                base = map_near(caller, f"kpatch:{patch.name}", candidates, size)
                if not base:
                    raise Refused([(patch.name, "could not map memory near the program's code")])

            in_target(s, map_stubs)
            critical.safe_point()
            funcs = []
            for i, ((f, addr, old_size, now), new_addr) in enumerate(zip(olds, new_addrs)):
                stub = base + stubs_at + i * arch.STUB_SIZE
                s.mem.write(stub, arch.far_stub(new_addr))
                prev = current.get(addr)
                funcs.append(PatchedFunc(f.name, patch.target["name"], 0, addr, old_size, stub, arch.STUB_SIZE, addr,
                                         now.hex(), prev[0].module if prev else None))
            record = PatchRecord(patch.name, seq, os.path.abspath(path), time.time(), [[base, size]],
                                 [[base + stubs_at, base + size]], PENDING,
                                 [{"name": patch.target["name"], "build_id": patch.target["build_id"]}], funcs,
                                 depends=sorted({f.prev for f in funcs if f.prev}), library=inside)
            header = record.encode()
            if len(header) > stubs_at:
                raise Refused([(patch.name, "too many functions for one patch record")])
            s.mem.write(base, header)

            def protect(caller: RemoteCaller) -> None:
                caller.mprotect(base, stubs_at, PROT_READ)
                caller.mprotect(base + stubs_at, size - stubs_at, PROT_READ | PROT_EXEC)

            in_target(s, protect)
            critical.safe_point()
            # Go code never has a replaced function's frame depend on its bytes past the entry: goroutines
            # in the old code run it to its end; only the bytes overwritten are checked (stack_check False).
            commit(s, record, current, False, timeout, critical)
        except BaseException:
            if record is None or record.state != "active":
                discard(s, record, [(base, size)] if base else [], timeout)
            raise
    return record, s.stats


def _bind(s: Session, binds: list[tuple[int, int]]) -> None:
    """Jumps from the plugin's copies of unchanged functions to the program's own (once: a plugin loaded
    again keeps them). Nothing runs the copies before the program's functions jump into the plugin."""
    writes = []
    for copy, host in binds:
        jump = arch.far_stub(host)[:BIND_SIZE]
        if s.mem.read(copy, BIND_SIZE) != jump:
            writes.append((copy, jump))
    if writes:
        with s.stopped():
            for copy, jump in writes:
                s.mem.write(copy, jump)


def gopatch_info(path: str) -> GoPatch:
    return load_gopatch(path)[0]
