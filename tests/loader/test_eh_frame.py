"""A patch's unwind information registered in the target: C++ exceptions thrown in, through and caught in
patched code of a live multi-threaded process (fixtures/cxx-throw), before, during and after the patch;
deregistered on revert and when an apply fails; a C target without an unwinder warned about."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from patch_build.elfcore.ehframe import TERMINATOR, records
from patch_build.elfcore.read import read_object
from patch_build.kbuild.options import BuildOptions
from patch_build.kbuild.userspace import build_user_patch
from patch_build.patchformat import integrity
from livetarget import REPO, assert_one_line_error, patch_ctl
from patch_build.loader.ehframe import unwind_section

FIXTURE = REPO / "fixtures" / "cxx-throw"
ORIGINAL = {"5": "OK 10", "-5": "ERR negative: -5", "abc": "ERR not a number", "13": "FAIL unlucky",
            "2000": "OK 4000"}
PATCHED = {"5": "OK 10", "-5": "ERR below zero: -5", "abc": "ERR not a number: abc", "13": "OK 26",
           "2000": "FAILED too big"}


@pytest.fixture(scope="module")
def thrower_build(tmp_path_factory) -> tuple[Path, Path]:
    """(the deployed tree, the fix's module built from the pristine sources with the real patch-build)"""
    root = tmp_path_factory.mktemp("cxx-throw")
    src, deployed = root / "src", root / "deployed"
    for tree in (src, deployed):
        shutil.copytree(FIXTURE, tree)
    subprocess.run(["make", "-s"], cwd=deployed, check=True, capture_output=True)
    scratch, saved = root / "tmp", tempfile.tempdir
    scratch.mkdir()
    tempfile.tempdir = str(scratch)
    try:
        options = BuildOptions(patches=[FIXTURE / "fix.patch"], srcdir=src, targets=["thrower"], name="throw-fix",
                               outdir=root / "out", jobs=1, target_binaries=[deployed / "thrower"])
        module = build_user_patch(options).module
    finally:
        tempfile.tempdir = saved
    return deployed, module


class Thrower:
    """The fixture running, asked over its stdin and stdout."""

    def __init__(self, tree: Path, workers: int = 3):
        self.proc = subprocess.Popen([str(tree / "thrower"), str(workers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid
        self.buf = b""
        assert self.read_line() == "ready"

    def read_line(self, limit: float = 10) -> str:
        deadline = time.monotonic() + limit
        while b"\n" not in self.buf:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            assert ready, f"no answer within {limit} s (process state {self.state()})"
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, f"the process ended: {self.proc.wait(5)}"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read_line()

    def answers(self) -> dict[str, str]:
        return {q: self.ask(q) for q in ORIGINAL}

    def work(self) -> int:
        reply = self.ask("STATS")
        assert reply.startswith("WORK "), reply
        return int(reply.split()[1])

    def assert_working(self) -> None:
        """Alive, not stopped nor traced, and its workers still throwing and catching."""
        before = self.work()
        deadline = time.monotonic() + 10
        while self.work() < before + 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.work() >= before + 20, "the workers stalled"
        assert self.state()[0] in "SR" and self.status("TracerPid") == "0"

    def status(self, field: str) -> str:
        with open(f"/proc/{self.pid}/status") as f:
            return next(l.split(":\t", 1)[1].strip() for l in f if l.startswith(field + ":"))

    def state(self) -> str:
        return self.status("State") if self.proc.poll() is None else f"exited {self.proc.returncode}"

    def maps(self) -> str:
        with open(f"/proc/{self.pid}/maps") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def thrower(thrower_build):
    proc = Thrower(thrower_build[0])
    yield proc
    proc.stop()


def listed(pid: int) -> list[dict]:
    run = patch_ctl("list", "-p", pid, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["patches"]


def test_exceptions_through_patched_code(thrower_build, thrower):
    module = thrower_build[1]
    assert "libgcc_s" in thrower.maps()
    assert thrower.answers() == ORIGINAL
    for _ in range(2):  # registered and deregistered twice: libgcc's lists stay sound
        run = patch_ctl("apply", "-p", thrower.pid, module)
        assert run.returncode == 0 and run.stderr == "", run.stderr
        # thrown in patched code and caught there (-5), thrown in libstdc++ through patched code and caught
        # in it (abc), thrown in patched code through patched code and caught in the patched caller (2000)
        assert thrower.answers() == PATCHED
        thrower.assert_working()
        (patch,) = listed(thrower.pid)
        assert patch["state"] == "active" and len(patch["frames"]) == 1
        (start, size), (eh_frame, obj, _, confirmed) = patch["mappings"][0], patch["frames"][0]
        assert confirmed == 1
        assert start < eh_frame < obj < start + size
        text = patch_ctl("list", "-p", thrower.pid)
        assert text.returncode == 0 and f"unwind information registered at {eh_frame:#x}" in text.stdout

        run = patch_ctl("revert", "-p", thrower.pid, "throw-fix")
        assert run.returncode == 0, run.stderr
        assert thrower.answers() == ORIGINAL
        assert listed(thrower.pid) == [] and "kpatch:" not in thrower.maps()
        thrower.assert_working()


def test_failed_apply_deregisters(thrower_build, thrower):
    """A replaced function stays on a stack past the timeout: the apply fails after the frames were
    registered; they are taken back before the unmap (else the next exception would read freed memory)."""
    thrower.send("SLOW")  # the main thread sits in handle() for 4 s
    sent = time.monotonic()
    time.sleep(0.1)
    run = patch_ctl("apply", "-p", thrower.pid, thrower_build[1], "--timeout", "0.5")
    assert time.monotonic() - sent < 4, "patch-ctl too slow for this test"
    assert_one_line_error(run, 1, "_Z6handle", "on its stack")
    assert thrower.read_line() == "SLEPT"
    assert "kpatch:" not in thrower.maps() and listed(thrower.pid) == []
    thrower.assert_working()
    assert thrower.answers() == ORIGINAL


def test_c_target_without_unwinder_patches_quietly(builds, server):
    """No libgcc_s, so no C++ exceptions: the frames are not registered and nothing is worth a warning."""
    with open(f"/proc/{server.pid}/maps") as f:
        assert "libgcc_s" not in f.read()
    run = patch_ctl("apply", "-p", server.pid, builds.modules["incr-fix"])
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert server.ask("SET n 1", "INCR n") == ["OK", "VALUE 2"]
    assert [p["frames"] for p in listed(server.pid)] == [[]]
    assert patch_ctl("revert", "-p", server.pid, "incr-fix").returncode == 0
    server.assert_running_untraced()


def test_unwind_section_per_mapping(thrower_build):
    """Each mapping gets the FDEs of its own code, their CIE and one terminator, whatever terminators the
    module's .eh_frame holds inside."""
    obj = read_object(str(thrower_build[1]))
    eh = next(s for s in obj.sections if s.name == ".eh_frame")
    code = {s.index: s for s in obj.sections if s.is_text and s.size}
    assert eh.data.endswith(TERMINATOR)
    whole = unwind_section(obj, set(code))
    assert whole.data == eh.data and len(whole.relocations) == len(eh.relocations)

    process = {i for i, s in code.items() if s.name.endswith("._Z7processl")}
    assert len(process) == 2  # hot and cold parts
    part = unwind_section(obj, process)
    kept = records(part.data)
    assert [cie for _, _, cie in kept] == [-1, 0, 0]
    assert part.data[kept[-1][0] + kept[-1][1]:] == TERMINATOR  # one, at the end
    pc_begins = {off + 8 for off, _, cie in kept if cie >= 0}
    assert {r.symbol.section.index for r in part.relocations if r.offset in pc_begins} == process
    assert unwind_section(obj, set()) is None

    # a terminator inside (objects concatenated) is dropped: the same records come out
    cut = next(off for off, _, cie in records(eh.data) if cie < 0 and off)
    eh.data = eh.data[:cut] + TERMINATOR + eh.data[cut:]
    for r in eh.relocations:
        if r.offset >= cut:
            r.offset += 4
    assert unwind_section(obj, set(code)).data == whole.data


def _blocked_pc(tid: int) -> int:
    """The PC of a thread blocked in a system call (just released by a stop, it may take a moment to block
    again: /proc says "running" meanwhile)."""
    deadline = time.monotonic() + 5
    while True:
        with open(f"/proc/{tid}/syscall") as f:
            fields = f.read().split()
        if fields[0] != "running" or time.monotonic() > deadline:
            return int(fields[-1], 16)
        time.sleep(0.01)


def test_registry_call_thread(thrower):
    """The unwinder's calls are made by a thread stopped outside libgcc_s and the allocator: the main thread
    unless it is inside code to avoid, then another; every thread released afterwards."""
    from patch_build.loader.frames import find_registry
    from patch_build.loader.session import Session, in_clear_thread
    from patch_build.loader.resolve import Resolver

    thrower.answers()
    s = Session(thrower.pid)
    try:
        registry = find_registry(s.objects, Resolver(s.objects, {}, s.mem))
        libgcc = next(o for o in s.objects if o.name.startswith("libgcc_s"))
        malloc, _ = Resolver(s.objects, {}, s.mem).global_("malloc")
        assert libgcc.start <= registry.register < libgcc.end and libgcc.start <= registry.deregister < libgcc.end
        assert not registry.clear([s.objects[0].start, registry.register + 16])
        assert not registry.clear([malloc])
        assert registry.clear([s.objects[0].start + 1])
        assert in_clear_thread(s, registry, lambda caller: caller.thread.tid, 1.0) == thrower.pid
        main_pc = _blocked_pc(thrower.pid)  # blocked reading its stdin
        registry.avoid = sorted(registry.avoid + [(main_pc - 1, main_pc + 1)])
        tid = in_clear_thread(s, registry, lambda caller: caller.thread.tid, 1.0)
        assert tid != thrower.pid and str(tid) in os.listdir(f"/proc/{thrower.pid}/task")
        registry.avoid = [(0, 1 << 64)]
        with pytest.raises(Exception, match="every thread stayed inside the unwinder"):
            in_clear_thread(s, registry, lambda caller: caller.thread.tid, 0.2)
    finally:
        s.close()
    thrower.assert_working()
    assert thrower.answers() == ORIGINAL


def test_remote_function_call(thrower):
    """A function called in a stopped thread returns its value; every register, vector ones included, is
    as it was right after the call (so a patch-ctl killed between two calls leaves the thread as it found
    it), and the thread carries on."""
    from patch_build.loader.session import Session
    from patch_build.loader.ptrace import Stopped
    from patch_build.loader.remote import RemoteCaller, RemoteError
    from patch_build.loader.resolve import Resolver

    s = Session(thrower.pid)
    try:
        strlen, _ = Resolver(s.objects, {}, s.mem).global_("strlen")  # vectorised: changes xmm/ymm registers
        with Stopped(thrower.pid, only=thrower.pid) as one:
            thread = one.threads[thrower.pid]
            regs, fp = bytes(thread.get_regs()), thread.get_fpstate()
            caller = RemoteCaller(thread, s.mem, s.syscall_insn)
            try:
                assert caller.call_function(strlen, caller.scratch_string("exceptions")) == 10
                assert bytes(thread.get_regs()) == regs and thread.get_fpstate() == fp
                with pytest.raises(RemoteError, match="faulted"):
                    caller.call_function(strlen, 8)  # reads address 8
            finally:
                caller.restore()
            assert bytes(thread.get_regs()) == regs and thread.get_fpstate() == fp
    finally:
        s.close()
    assert thrower.state()[0] in "SR" and thrower.status("TracerPid") == "0"
    assert thrower.answers() == ORIGINAL
    thrower.assert_working()


def test_corrupt_eh_frame(thrower_build, thrower, tmp_path):
    """A module whose .eh_frame does not parse: one-line error, exit 2, the process untouched."""
    from elftools.elf.elffile import ELFFile

    module = tmp_path / "corrupt.kpatch"
    blob = bytearray(thrower_build[1].read_bytes())
    with open(thrower_build[1], "rb") as f:
        offset = ELFFile(f).get_section_by_name(".eh_frame")["sh_offset"]
    blob[offset:offset + 4] = (0x7FFFFFF0).to_bytes(4, "little")  # the first CIE's length: past the end
    module.write_bytes(bytes(blob))
    integrity.seal(module)  # a digest that matches: the check behind it is what is tested
    run = patch_ctl("apply", "-p", thrower.pid, module)
    assert_one_line_error(run, 2, ".eh_frame is malformed")
    assert "kpatch:" not in thrower.maps()
    assert thrower.answers() == ORIGINAL
    thrower.assert_working()
