"""`patch-ctl daemon` and `status` on the live fixture server: an installed patch follows the server
through starts and restarts, stops with the uninstall, and leaves another build alone; a process it cannot
patch runs on. The exec gate (fanotify) on a small program that prints its patched answer first thing: every
run patched before its main, other programs never stopped, the fallback without it, and every way the gate
can fail or the daemon die lets the exec go on. (The systemd unit that runs the daemon:
tests/build/test_package.py.)

The machine is shared: the server built here carries a tag of this run, so its build-id (and so the
patch's target) is its own, and the daemon touches no other test's servers."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from patch_build.kbuild.options import BuildOptions
from patch_build.kbuild.userspace import build_user_patch
from livetarget import FIXTURE, TRACER, Server, patch_ctl, patch_ctl_argv, patch_ctl_env

pytestmark = pytest.mark.slow  # a tagged server tree and its module built, a daemon run: about 40 s


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """(pristine source, deployed tree, another build of it, incr-fix module) for a server of this run."""
    root = tmp_path_factory.mktemp("daemon")
    src, deployed, other = root / "src", root / "deployed", root / "other"
    shutil.copytree(FIXTURE, src)
    for unit in ("server.c", "srvutil.c"):  # the program and its library
        with open(src / unit, "a") as f:
            f.write(f'\nconst char daemon_test_run_{unit[:-2]}[] = "{uuid.uuid4().hex}";\n')
    for tree in (deployed, other):
        shutil.copytree(src, tree)
    subprocess.run(["make", "-s"], cwd=deployed, check=True, capture_output=True)
    subprocess.run(["make", "-s", "CFLAGS=-O1 -g -Wall"], cwd=other, check=True, capture_output=True)
    return src, deployed, other, _module(root, src, deployed, "incr-fix", "server")


def _module(root, src, deployed, name: str, target: str):
    """The module NAME (fixtures/server/NAME.patch) for `target` of the deployed tree."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(root)
    try:
        return build_user_patch(BuildOptions(patches=[FIXTURE / f"{name}.patch"], srcdir=src, targets=[target],
                                             name=name, outdir=root / "out", jobs=1,
                                             target_binaries=[deployed / target])).module
    finally:
        tempfile.tempdir = saved


@pytest.fixture(scope="module")
def library_fix(tagged):
    """sum-fix, a patch of the server's library libsrvutil.so."""
    src, deployed, _, _ = tagged
    return _module(deployed.parent, src, deployed, "sum-fix", "libsrvutil.so")


class Daemon:
    """`patch-ctl daemon` in the foreground, its lines collected as they come."""

    def __init__(self, store, wrapper: list[str] = (), fault: str = ""):
        """`wrapper`: the command that runs it (setpriv: with fewer capabilities); `fault`: PATCH_CTL_FAULT."""
        env = dict(patch_ctl_env(), PATCH_CTL_FAULT=fault) if fault else patch_ctl_env()
        self.proc = subprocess.Popen([*wrapper, *patch_ctl_argv("daemon", "--store", store)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_for("watching for new ones", 120)  # every process of the machine looked at first

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [l for l in self.lines if text in l]
            if found:
                return found[0]
            assert self.proc.poll() is None, self.lines
            time.sleep(0.01)
        raise AssertionError(f"no {text!r} from the daemon in {seconds} s: {self.lines}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.reader.join(timeout=5)
        return code


def _patched(server: Server) -> bool:
    return bool(server.patch_mappings())


def _fixed(server: Server) -> bool:
    return server.ask("SET n 1", "INCR n") == ["OK", "VALUE 2"]  # incr-fix: INCR adds 1, not 2


def _sum_fixed(server: Server) -> bool:
    return server.ask("SUM abc") == ["VALUE 294"]  # sum-fix: the last byte counted too (195 without it)


def _patched_within(server: Server, seconds: float, daemon: Daemon, fixed=_fixed) -> float:
    """Seconds from the server's start (its first line) until it answers as the fix (`fixed`) makes it."""
    deadline = server.started + seconds + 5  # past the limit: measured, then failed
    while not fixed(server) and time.monotonic() < deadline:
        time.sleep(0.005)
    took = time.monotonic() - server.started
    assert _patched(server) and fixed(server), f"not patched {took:.2f} s after its start: {daemon.lines}"
    assert took < seconds, f"patched {took:.2f} s after its start: {daemon.lines}"
    return took


def _start(tree) -> Server:
    server = Server(tree)
    server.started = time.monotonic()
    return server


def test_daemon_follows_installs_and_starts(tagged, tmp_path):
    src, deployed, other, module = tagged
    store = tmp_path / "store"
    run = patch_ctl("install", "--store", store, module)
    assert run.returncode == 0, run.stderr
    running = _start(deployed)  # before the daemon: patched by its first look at every process
    daemon = Daemon(store)
    servers = [running]
    try:
        assert _patched(running) and _fixed(running)
        daemon.wait_for(f"applied incr-fix to process {running.pid} (server)", 1)

        fresh = _start(deployed)
        servers.append(fresh)
        _patched_within(fresh, 1.0, daemon)
        daemon.wait_for(f"applied incr-fix to process {fresh.pid} (server)", 5)

        status = json.loads(patch_ctl("status", "--json").stdout)["processes"]
        mine = {p["pid"]: p for p in status if p["pid"] in (running.pid, fresh.pid)}
        assert {pid: [m["module"] for m in p["patches"]] for pid, p in mine.items()} == {
            running.pid: ["incr-fix"], fresh.pid: ["incr-fix"]}
        text = patch_ctl("status").stdout
        assert f"{fresh.pid} server: incr-fix [active]" in text

        fresh.stop()  # restarted: the new process is patched again
        again = _start(deployed)
        servers.append(again)
        _patched_within(again, 1.0, daemon)

        unrelated = _start(other)  # the same program, another build: left alone
        servers.append(unrelated)

        assert patch_ctl("uninstall", "--store", store, "incr-fix").returncode == 0
        after = _start(deployed)
        servers.append(after)
        time.sleep(1.5)
        assert not _patched(unrelated) and unrelated.ask("SET n 1", "INCR n") == ["OK", "VALUE 3"]
        assert not _patched(after) and after.ask("SET n 1", "INCR n") == ["OK", "VALUE 3"]
        assert not [l for l in daemon.lines if f"process {after.pid} " in l or f"process {unrelated.pid} " in l]
        assert _patched(running)  # an uninstall reverts nothing
    finally:
        code = daemon.stop()
        for server in servers:
            server.stop()
    assert code == 0 and daemon.lines[-1] == "stopped by SIGTERM", daemon.lines
    assert not [l for l in daemon.lines if l.startswith("not applied")], daemon.lines


def test_daemon_patches_a_library_of_a_new_process(tagged, library_fix, tmp_path):
    """A patch of a shared library: no exec opens it, so the exec gate does not hold the process; the
    connector's event does, as without the gate (at its entry point when in time, else as it runs), within a
    second of its start."""
    src, deployed, other, _ = tagged
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, library_fix).returncode == 0
    daemon = Daemon(store)
    servers = []
    try:
        assert [l for l in daemon.lines if l.startswith(GATE_OPEN)], daemon.lines
        server = _start(deployed)
        servers.append(server)
        _patched_within(server, 1.0, daemon, _sum_fixed)
        daemon.wait_for(f"applied sum-fix to process {server.pid} (server)", 5)
        unrelated = _start(other)  # another build of the library: left alone
        servers.append(unrelated)
        time.sleep(1.5)
        assert not _patched(unrelated) and unrelated.ask("SUM abc") == ["VALUE 195"]
    finally:
        code = daemon.stop()
        for s in servers:
            s.stop()
    assert code == 0 and not [l for l in daemon.lines if l.startswith("not applied")], daemon.lines


# prints what answer() returns as the first thing it does, and exits: the patch makes it 42
FIRST = """#include <stdio.h>
__attribute__((noinline)) int answer(void) { return 41; }
int main(void) { printf("%d\\n", answer()); return 0; }
const char first_test_run[] = "RUN";
"""
FIRST_FIX = """--- a/first.c
+++ b/first.c
@@ -1,3 +1,3 @@
 #include <stdio.h>
-__attribute__((noinline)) int answer(void) { return 41; }
+__attribute__((noinline)) int answer(void) { return 42; }
 int main(void) { printf("%d\\n", answer()); return 0; }
"""
# no patch targets it: prints, first thing, whether it is traced (a daemon that held it would be its tracer)
OTHER = """#include <stdio.h>
#include <string.h>
int main(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "TracerPid:", 10) == 0) fputs(line, stdout);
    return 0;
}
const char other_test_run[] = "RUN";
"""
GATE_OPEN = "exec gate open on "


def _build_first(root, ldflags: str = "") -> tuple:
    """(the `first` program, its answer-fix module), of this run's own build-id, built under `root`."""
    src, deployed = root / "src", root / "deployed"
    tag = uuid.uuid4().hex
    for tree in (src, deployed):
        tree.mkdir()
        (tree / "first.c").write_text(FIRST.replace("RUN", tag))
        (tree / "Makefile").write_text(f"first: first.o\n\t$(CC) {ldflags} -o $@ first.o\n"
                                       "first.o: first.c\n\t$(CC) -O2 -g -c -o $@ first.c\n")
    (root / "answer-fix.patch").write_text(FIRST_FIX)
    subprocess.run(["make", "-s"], cwd=deployed, check=True, capture_output=True)
    assert subprocess.run([deployed / "first"], capture_output=True, text=True).stdout == "41\n"
    module = build_user_patch(BuildOptions(patches=[root / "answer-fix.patch"], srcdir=src, targets=["first"],
                                           name="answer-fix", outdir=root / "out", jobs=1,
                                           target_binaries=[deployed / "first"])).module
    return deployed / "first", module


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """(the `first` program, its answer-fix module, the `other` program), of this run's own build-ids."""
    root = tmp_path_factory.mktemp("first")
    program, module = _build_first(root)
    (root / "other.c").write_text(OTHER.replace("RUN", uuid.uuid4().hex))
    subprocess.run(["cc", "-O2", "-o", "other", "other.c"], cwd=root, check=True, capture_output=True)
    return program, module, root / "other"


def _timed_runs(program, count: int) -> tuple[list[tuple[int, str, int]], float]:
    """(pid, output, exit code) of `count` runs one after the other, and the median seconds a run took."""
    runs, took = [], []
    for _ in range(count):
        started = time.monotonic()
        proc = subprocess.Popen([program], stdout=subprocess.PIPE, text=True)
        out = proc.communicate(timeout=30)[0]
        took.append(time.monotonic() - started)
        runs.append((proc.pid, out, proc.returncode))
    return runs, sorted(took)[count // 2]


def test_daemon_patches_every_new_process_before_its_main(first, tmp_path):
    """The exec gate (fanotify) makes each exec of the targeted program wait until the daemon has seized it:
    every run's first line, printed by the first statement of its main, is already patched (through the
    process-event connector alone some runs start too fast). A program no patch targets is neither held
    nor traced, and takes about as long as without the daemon."""
    program, module, other = first
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    _, alone = _timed_runs(other, 20)
    daemon = Daemon(store)
    try:
        assert [l for l in daemon.lines if l.startswith(GATE_OPEN)], daemon.lines
        runs, _ = _timed_runs(program, 20)
        others, gated = _timed_runs(other, 20)
        time.sleep(0.5)  # the daemon's last lines read
    finally:
        code = daemon.stop()
    assert [(out, rc) for _, out, rc in runs] == [("42\n", 0)] * 20, (runs, daemon.lines)
    applied = [l for l in daemon.lines if l.startswith("applied answer-fix to process ")]
    assert sorted(int(l.split()[4]) for l in applied) == sorted(pid for pid, _, _ in runs), daemon.lines
    assert all(l.endswith("at its entry point") for l in applied), daemon.lines
    assert [(out, rc) for _, out, rc in others] == [("TracerPid:\t0\n", 0)] * 20, others
    assert not [l for l in daemon.lines for pid, _, _ in others if f"process {pid} " in l], daemon.lines
    assert gated < alone + 0.05, f"a run of a program no patch targets took {gated:.3f} s, {alone:.3f} s alone"
    assert code == 0 and not [l for l in daemon.lines if l.startswith("not applied")], daemon.lines


def test_daemon_holds_a_static_program_at_its_first_instruction(tmp_path):
    """A static program has no dynamic linker to run while the connector's event comes: stopped at its exec,
    it stands at its entry point already, and is patched there, every run."""
    program, module = _build_first(tmp_path, "-static")
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    daemon = Daemon(store)
    try:
        runs, _ = _timed_runs(program, 5)
        time.sleep(0.5)  # the daemon's last lines read
    finally:
        code = daemon.stop()
    assert [(out, rc) for _, out, rc in runs] == [("42\n", 0)] * 5, (runs, daemon.lines)
    held = [l for l in daemon.lines if l.startswith("applied answer-fix to process ") and l.endswith("entry point")]
    assert len(held) == 5 and code == 0, daemon.lines


def _tracer(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("TracerPid:"))


def _seizes_only(daemon: Daemon, program, other, tmp_path) -> None:
    """Under strace, the daemon seizes one run of `program` (patched: 42), none of five runs of `other`
    (each sees no tracer), and stops cleanly."""
    trace = tmp_path / "daemon.strace"
    strace = subprocess.Popen(["strace", "-qq", "-f", "-e", "trace=ptrace", "-o", trace, "-p", str(daemon.proc.pid)],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while _tracer(daemon.proc.pid) != strace.pid and time.monotonic() < deadline:
            time.sleep(0.01)
        others, _ = _timed_runs(other, 5)
        runs, _ = _timed_runs(program, 1)
        time.sleep(0.5)
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=30)
        code = daemon.stop()
    seized = {int(l.split("PTRACE_SEIZE, ")[1].split(",")[0]) for l in trace.read_text().splitlines()
              if "PTRACE_SEIZE, " in l}
    assert runs[0][0] in seized and runs[0][1:] == ("42\n", 0), (runs, seized, daemon.lines)
    assert not seized & {pid for pid, _, _ in others}, (others, seized)
    assert [(out, rc) for _, out, rc in others] == [("TracerPid:\t0\n", 0)] * 5, others
    assert code == 0, daemon.lines


def test_daemon_never_stops_a_program_no_patch_targets(first, tmp_path):
    """The daemon's own ptrace calls, seen by strace: it seizes the targeted program's process, never one of
    a program no patch targets (through the process-event connector alone it stops every new process)."""
    program, module, other = first
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    _seizes_only(Daemon(store), program, other, tmp_path)


def test_daemon_without_the_exec_gate_says_so_and_patches_as_it_can(first, tmp_path):
    """Without CAP_SYS_ADMIN (a container, say) there are no exec permission events: the daemon says so and
    works from the process-event connector alone. A process stopped in time (still in the dynamic linker)
    is held at its entry point and prints the patched answer; the others run on (and finish) unharmed."""
    program, module, _ = first
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    daemon = Daemon(store, wrapper=["setpriv", "--bounding-set", "-sys_admin"])
    runs = {}
    try:
        assert [l for l in daemon.lines if l.startswith("exec gate unavailable (fanotify needs CAP_SYS_ADMIN)")], \
            daemon.lines
        for _ in range(10):
            time.sleep(0.2)  # the daemon back waiting for events
            proc = subprocess.Popen([program], stdout=subprocess.PIPE, text=True)
            runs[proc.pid] = (proc.communicate(timeout=30)[0], proc.returncode)
        time.sleep(0.5)  # the daemon's last lines read
    finally:
        code = daemon.stop()
    held = {int(l.split()[4]) for l in daemon.lines if l.startswith("applied answer-fix to process ")
            and l.endswith("at its entry point")}
    assert held, (runs, daemon.lines)  # on this machine most are; one is enough to test what follows
    assert all(runs[pid] == ("42\n", 0) for pid in held), (runs, daemon.lines)
    assert all(run in (("41\n", 0), ("42\n", 0)) for run in runs.values()), runs
    assert code == 0 and not [l for l in daemon.lines if l.startswith("not applied")], daemon.lines


def test_daemon_holds_execs_from_a_filesystem_mounted_after_its_start(first, tmp_path):
    """The gate marks filesystems mounted while it runs (it watches the mount table): the targeted program
    copied onto a tmpfs mounted after the daemon's start is held from its exec like any other."""
    program, module, _ = first
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    mnt.mkdir()
    daemon = Daemon(store)
    mounted = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "patch-build-test", mnt], check=True)
        mounted = True
        shutil.copy2(program, mnt / "first")
        time.sleep(0.2)  # the gate's thread sees the mount table change
        runs, _ = _timed_runs(mnt / "first", 10)
        time.sleep(0.5)  # the daemon's last lines read
    finally:
        code = daemon.stop()
        if mounted:
            subprocess.run(["umount", mnt], check=True)
    assert [(out, rc) for _, out, rc in runs] == [("42\n", 0)] * 10, (runs, daemon.lines)
    held = [l for l in daemon.lines if l.startswith("applied answer-fix to process ") and l.endswith("entry point")]
    assert len(held) == 10 and code == 0, daemon.lines


def test_daemon_goes_on_after_a_held_exec_fails(first, tmp_path):
    """The targeted program (its build-id unchanged) with a dynamic linker that does not exist: the gate lets
    the exec go on, the kernel then fails it (ENOENT), and the caller gets that error at once; the daemon
    goes on holding the next exec."""
    program, module, _ = first
    store, broken = tmp_path / "store", tmp_path / "broken"
    data = program.read_bytes()
    interp = b"/lib64/ld-linux-x86-64.so.2\0"
    assert data.count(interp) == 1
    broken.write_bytes(data.replace(interp, b"/lib64/ld-missing-x86-64.so\0"))
    broken.chmod(0o755)
    assert patch_ctl("install", "--store", store, module).returncode == 0
    daemon = Daemon(store)
    try:
        started = time.monotonic()
        with pytest.raises(FileNotFoundError):
            subprocess.run([broken], capture_output=True, timeout=10)
        assert time.monotonic() - started < 2.0
        runs, _ = _timed_runs(program, 1)
    finally:
        code = daemon.stop()
    assert [(out, rc) for _, out, rc in runs] == [("42\n", 0)], (runs, daemon.lines)
    assert code == 0, daemon.lines


def _runs_unpatched_past_a_killed_daemon(daemon: Daemon, program) -> None:
    """A run of `program` while the daemon kills itself (a fault point's SIGKILL) holding it: it runs on
    unpatched, neither left waiting nor stopped, and exits normally."""
    proc = subprocess.Popen([program], stdout=subprocess.PIPE, text=True)
    assert daemon.proc.wait(timeout=30) == -signal.SIGKILL, daemon.lines
    assert proc.communicate(timeout=10) == ("41\n", None)
    assert proc.returncode == 0


@pytest.mark.parametrize("point", ["exec-take", "exec-seized", "exec-stopped", "entry-armed"])
def test_daemon_killed_while_holding_an_exec(first, tmp_path, point):
    """The daemon killed (SIGKILL) with an exec in its hands: waiting for the daemon's answer (the kernel
    answers for a fanotify group that closes), seized while it waits (and the kernel detaches the tracees of
    a tracer that dies), or stopped at the exec. The process runs on unpatched (not left waiting nor
    stopped) and exits normally."""
    program, module, _ = first
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    daemon = Daemon(store, fault=f"{point}:kill")
    try:
        _runs_unpatched_past_a_killed_daemon(daemon, program)
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()


@pytest.mark.parametrize("blocked, fault", [
    ((signal.SIGURG,), ""), ((signal.SIGURG,), "entry-armed:kill"),
    ((signal.SIGURG, signal.SIGWINCH), "")], ids=["urg-held", "urg-killed", "both-held"])
def test_daemon_entry_trap_with_blocked_signals(first, tmp_path, blocked, fault):
    """A program started with signals blocked (the mask survives the exec): the entry stub sends the first
    quiet signal the thread does not block (SIGWINCH when SIGURG is), so the start is held and patched, and a
    daemon killed with the trap in place still leaves it to run on; with both blocked the trap is an int3,
    which holds it all the same."""
    program, module, _ = first
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    daemon = Daemon(store, fault=fault)
    try:
        proc = subprocess.Popen([program], stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, blocked))
        out = proc.communicate(timeout=30)[0]
        if fault:
            assert daemon.proc.wait(timeout=30) == -signal.SIGKILL, daemon.lines
        else:
            time.sleep(0.5)  # the daemon's last lines read
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
    assert (out, proc.returncode) == ("41\n" if fault else "42\n", 0), daemon.lines
    if not fault:
        assert [l for l in daemon.lines if l.startswith(f"applied answer-fix to process {proc.pid} ")
                and l.endswith("at its entry point")], daemon.lines


@pytest.mark.parametrize("fault, line", [
    ("exec-handoff:error", "exec gate: process {pid} let go: [Errno 5] injected fault at exec-handoff"),
    ("exec-take:stall", "process {pid} (first) not held at its exec: the daemon was busy for 1 s")],
    ids=["error", "busy"])
def test_daemon_lets_an_exec_go_on_when_it_cannot_hold_it(first, tmp_path, fault, line):
    """An error while the gate looks at a targeted exec, or a main thread busy elsewhere for longer than the
    gate waits for it (HANDOFF_LIMIT): the exec goes on (the process runs, unheld), and the log says why."""
    program, module, _ = first
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    daemon = Daemon(store, fault=fault)
    try:
        started = time.monotonic()
        proc = subprocess.Popen([program], stdout=subprocess.PIPE, text=True)
        out = proc.communicate(timeout=10)[0]
        took = time.monotonic() - started
        daemon.wait_for(line.format(pid=proc.pid), 10)
    finally:
        code = daemon.stop()
    assert proc.returncode == 0 and out in ("41\n", "42\n"), out
    assert took < 2.5, f"the exec waited {took:.2f} s"  # the stall is 3 s, the gate waits 1 s
    assert code == 0, daemon.lines


def test_daemon_logs_a_refusal_and_leaves_the_process_running(tagged, tmp_path):
    """A server another tracer holds cannot be patched: the daemon says so and the server runs on unpatched."""
    src, deployed, other, module = tagged
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    server = _start(deployed)
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(server.pid)], stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline() == "tracing\n"
        daemon = Daemon(store)
        line = daemon.wait_for(f"not applied incr-fix to process {server.pid} (server)", 5)
        assert "left running unpatched" in line and f"already traced by process {tracer.pid}" in line, line
        assert daemon.stop() == 0
        tracer.kill()
        tracer.wait()
        assert not _patched(server)
        assert server.ask("SET n 1", "INCR n") == ["OK", "VALUE 3"]
        server.assert_running_untraced()
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        server.stop()


# A library whose function lib_answer() is patched, and a program that prints its answer first thing; given
# an argument, it then waits (a process that maps the library when the daemon starts).
LIBRARY = """__attribute__((noinline)) int lib_answer(void) { return 41; }
const char firstlib_test_run[] = "RUN";
"""
LIBRARY_FIX = """--- a/firstlib.c
+++ b/firstlib.c
@@ -1,2 +1,2 @@
-__attribute__((noinline)) int lib_answer(void) { return 41; }
+__attribute__((noinline)) int lib_answer(void) { return 42; }
 const char firstlib_test_run[] = "RUN";
"""
LIBRARY_USER = """#include <stdio.h>
#include <unistd.h>
int lib_answer(void);
int main(int argc, char **argv) {
    printf("%d\\n", lib_answer());
    fflush(stdout);
    if (argc > 1)
        pause();
    return 0;
}
"""
# needs no library of ours: dlopens the library given as its argument when told to (a line on stdin), calls
# its lib_answer() at once, and once more at the next line
DLOPENER = """#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    char line[16];
    printf("started\\n");
    fflush(stdout);
    if (argc < 2 || !fgets(line, sizeof line, stdin)) return 1;
    void *lib = dlopen(argv[1], RTLD_NOW);
    int (*answer)(void) = lib ? (int (*)(void))dlsym(lib, "lib_answer") : 0;
    if (!answer) return 1;
    printf("%d\\n", answer());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    printf("%d\\n", answer());
    return 0;
}
const char dlopener_test_run[] = "RUN";
"""


@pytest.fixture(scope="module")
def first_library(tmp_path_factory):
    """(the program using libfirstlib.so, the library, its answer-fix module, the dlopener), this run's own."""
    root = tmp_path_factory.mktemp("firstlib")
    src, deployed = root / "src", root / "deployed"
    tag = uuid.uuid4().hex
    for tree in (src, deployed):
        tree.mkdir()
        (tree / "firstlib.c").write_text(LIBRARY.replace("RUN", tag))
        (tree / "libuser.c").write_text(LIBRARY_USER)
        (tree / "Makefile").write_text(
            "libuser: libuser.c libfirstlib.so\n\t$(CC) -O2 -o $@ libuser.c -L. -lfirstlib -Wl,-rpath,'$$ORIGIN'\n"
            "libfirstlib.so: firstlib.o\n\t$(CC) -shared -Wl,-soname,libfirstlib.so -o $@ firstlib.o\n"
            "firstlib.o: firstlib.c\n\t$(CC) -O2 -g -fPIC -c -o $@ firstlib.c\n")
    (root / "lib-answer-fix.patch").write_text(LIBRARY_FIX.replace("RUN", tag))
    subprocess.run(["make", "-s"], cwd=deployed, check=True, capture_output=True)
    assert subprocess.run([deployed / "libuser"], capture_output=True, text=True).stdout == "41\n"
    module = build_user_patch(BuildOptions(patches=[root / "lib-answer-fix.patch"], srcdir=src,
                                           targets=["libfirstlib.so"], name="lib-answer-fix", outdir=root / "out",
                                           jobs=1, target_binaries=[deployed / "libfirstlib.so"])).module
    (root / "dlopener.c").write_text(DLOPENER.replace("RUN", uuid.uuid4().hex))
    subprocess.run(["cc", "-O2", "-o", "dlopener", "dlopener.c"], cwd=root, check=True, capture_output=True)
    return deployed / "libuser", deployed / "libfirstlib.so", module, root / "dlopener"


def _library_daemon(first_library, tmp_path, fault: str = "") -> tuple[Daemon, subprocess.Popen]:
    """A daemon for the installed lib-answer-fix, started while a process maps the library (how the daemon
    learns where a library outside the dynamic linker's default places lies): that process's own start,
    and the library's file marked at the gate."""
    program, library, module, _ = first_library
    store = tmp_path / "store"
    assert patch_ctl("install", "--store", store, module).returncode == 0
    waiting = subprocess.Popen([program, "wait"], stdout=subprocess.PIPE, text=True)
    assert waiting.stdout.readline() == "41\n"
    daemon = Daemon(store, fault=fault)
    daemon.wait_for(f"exec gate: library {library} marked", 1)
    return daemon, waiting


def test_daemon_holds_every_start_that_loads_a_patched_library(first_library, tmp_path):
    """A patch of a shared library: the dynamic linker opens it with a plain open, which waits at the gate
    (the library's file is marked): each new process of a program that needs it is held at its entry point,
    and its main's first statement calls the patched function, every run."""
    program, library, _, _ = first_library
    daemon, waiting = _library_daemon(first_library, tmp_path)
    try:
        daemon.wait_for(f"applied lib-answer-fix to process {waiting.pid} (libuser)", 5)
        runs, _ = _timed_runs(program, 20)
        time.sleep(0.5)  # the daemon's last lines read
    finally:
        code = daemon.stop()
        waiting.kill()
        waiting.wait()
    assert [(out, rc) for _, out, rc in runs] == [("42\n", 0)] * 20, (runs, daemon.lines)
    applied = [l for l in daemon.lines if l.startswith("applied lib-answer-fix to process ")
               and int(l.split()[4]) in {pid for pid, _, _ in runs}]
    assert len(applied) == 20 and all(l.endswith("at its entry point") for l in applied), daemon.lines
    assert code == 0 and not [l for l in daemon.lines if l.startswith("not applied")], daemon.lines


def test_daemon_never_stops_a_program_without_the_patched_library(first, first_library, tmp_path):
    """With a library patch installed, the daemon's ptrace calls (strace): it seizes the process that loads
    the library, never one of a program that does not (through the connector, it stopped every new process)."""
    program = first_library[0]
    other = first[2]
    daemon, waiting = _library_daemon(first_library, tmp_path)
    try:
        _seizes_only(daemon, program, other, tmp_path)
    finally:
        waiting.kill()
        waiting.wait()


@pytest.mark.parametrize("point", ["open-take", "open-seized", "open-stopped", "entry-armed"])
def test_daemon_killed_while_holding_a_library_open(first_library, tmp_path, point):
    """The daemon killed (SIGKILL) with a library open in its hands: waiting for its answer, seized while it
    waits, or stopped as the open returned. The process runs on unpatched and exits normally."""
    program = first_library[0]
    daemon, waiting = _library_daemon(first_library, tmp_path, fault=f"{point}:kill")
    try:
        _runs_unpatched_past_a_killed_daemon(daemon, program)
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        waiting.kill()
        waiting.wait()


def test_daemon_patches_a_library_loaded_after_the_start_as_it_runs(first_library, tmp_path):
    """A dlopen of the marked library after the process's start is not held (the gate lets the open go on
    at once: the process is past its entry point): the daemon patches the process as it runs once it maps
    the library, so the calls made right after the dlopen may still run unpatched, the later ones do not."""
    _, library, _, dlopener = first_library
    daemon, waiting = _library_daemon(first_library, tmp_path)
    proc = subprocess.Popen([dlopener, library], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        time.sleep(0.5)  # long past its start: the connector's look at it is over
        proc.stdin.write("load\n")
        proc.stdin.flush()
        assert proc.stdout.readline() in ("41\n", "42\n")  # called at once after the dlopen
        daemon.wait_for(f"applied lib-answer-fix to process {proc.pid} (dlopener)", 2)
        proc.stdin.write("call\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "42\n"
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        code = daemon.stop()
        waiting.kill()
        waiting.wait()
    line = next(l for l in daemon.lines if l.startswith(f"applied lib-answer-fix to process {proc.pid} "))
    assert not line.endswith("at its entry point") and code == 0, daemon.lines


@pytest.mark.parametrize("fault, line", [
    ("open-handoff:error", "exec gate: process {pid} let go: [Errno 5] injected fault at open-handoff"),
    ("open-take:stall", "process {pid} not held at its open of libfirstlib.so: the daemon was busy for 1 s")],
    ids=["error", "busy"])
def test_daemon_lets_a_library_open_go_on_when_it_cannot_hold_it(first_library, tmp_path, fault, line):
    """The library gate's bounds are the exec gate's: an error while it looks at the open, or a main thread
    busy for longer than the gate waits: the open goes on (the process runs, unheld), and the log says why."""
    program = first_library[0]
    daemon, waiting = _library_daemon(first_library, tmp_path, fault=fault)
    try:
        started = time.monotonic()
        proc = subprocess.Popen([program], stdout=subprocess.PIPE, text=True)
        out = proc.communicate(timeout=10)[0]
        took = time.monotonic() - started
        daemon.wait_for(line.format(pid=proc.pid), 10)
    finally:
        code = daemon.stop()
        waiting.kill()
        waiting.wait()
    assert proc.returncode == 0 and out in ("41\n", "42\n"), out
    assert took < 2.5, f"the open waited {took:.2f} s"  # the stall is 3 s, the gate waits 1 s
    assert code == 0, daemon.lines
