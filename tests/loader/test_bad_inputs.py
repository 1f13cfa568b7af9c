"""Bad inputs and interruptions: a one-line error, the design's exit code, no traceback, and the target left
running, untraced and unpatched."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from patch_build.loader.ptrace import Stopped
from livetarget import Server, assert_one_line_error, patch_ctl, patch_ctl_argv, patch_ctl_env


def assert_untouched(server: Server) -> None:
    server.assert_running_untraced()
    assert server.patch_mappings() == []
    assert server.ask("INCR untouched") == ["VALUE 2"]  # still the buggy +2


def test_no_such_pid(builds):
    assert_one_line_error(patch_ctl("apply", "-p", 999999999, builds.modules["incr-fix"]), 2, "no such process")
    assert_one_line_error(patch_ctl("list", "-p", 999999999), 2, "no such process")
    assert_one_line_error(patch_ctl("revert", "-p", 999999999, "--all"), 2, "no such process")
    assert_one_line_error(patch_ctl("info", "/nonexistent/fix.kpatch"), 2, "fix.kpatch", "No such file")
    assert_one_line_error(patch_ctl("apply", builds.modules["incr-fix"]), 2, "Missing option", "--pid")
    assert_one_line_error(patch_ctl("list", "-p", "twelve"), 2, "--pid")


def test_pid_we_may_not_trace(builds, server):
    # patch-ctl in a new user namespace: root there, without CAP_SYS_PTRACE over the server's namespace
    proc = subprocess.run(["unshare", "--user", *patch_ctl_argv("apply", "-p", server.pid, builds.modules["incr-fix"])],
                          capture_output=True, text=True, env=patch_ctl_env(), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"patch-ctl: error: cannot trace process {server.pid}")
    assert_untouched(server)


def test_pid_already_traced(builds, server):
    """Another tracer (here this test, as a debugger would be) holds the threads: named in the error."""
    with Stopped(server.pid):
        run = patch_ctl("apply", "-p", server.pid, builds.modules["incr-fix"])
    assert_one_line_error(run, 2, f"cannot trace process {server.pid}", f"already traced by process {os.getpid()}")
    assert_untouched(server)


def test_wrong_build_id(builds):
    other = Server(builds.variant)  # the same sources built with -O1
    try:
        run = patch_ctl("apply", "-p", other.pid, builds.modules["incr-fix"])
        assert_one_line_error(run, 1, "build-id", "differs")
        assert_untouched(other)
    finally:
        other.stop()


@pytest.mark.parametrize("damage", ["truncated", "section-headers", "metadata", "not-elf"])
def test_corrupt_module(builds, server, tmp_path, damage):
    bad = tmp_path / "bad.kpatch"
    shutil.copy(builds.modules["incr-fix"], bad)
    data = bytearray(bad.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "section-headers":
        shoff = int.from_bytes(data[0x28:0x30], "little")
        data[shoff + 64: shoff + 64 * 4] = b"\xff" * (64 * 3)
    elif damage == "metadata":
        assert b".kpatch.funcs" in data  # the section names: the module loses its function table
        data = data.replace(b".kpatch.funcs", b".kpatch.fun_s")
    else:
        data = b"this is not a patch module\n" * 10
    bad.write_bytes(bytes(data))
    run = patch_ctl("apply", "-p", server.pid, bad)
    assert_one_line_error(run, 2, "bad.kpatch")
    assert_untouched(server)


def _apply_in_background(server: Server, module) -> subprocess.Popen:
    """Start an apply that keeps retrying (a worker is held inside cmd_hold) and wait until it has
    mapped its patch, i.e. is past loading and inside the consistency loop."""
    proc = subprocess.Popen(patch_ctl_argv("apply", "-p", server.pid, "--timeout", "60", module),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=patch_ctl_env())
    deadline = time.monotonic() + 60
    while not server.patch_mappings():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "apply never mapped its patch"
        time.sleep(0.02)
    time.sleep(0.3)
    return proc


def test_target_exits_during_apply(builds, server):
    held = server.connect()
    held.send("HOLD")
    proc = _apply_in_background(server, builds.modules["hold-reply"])
    server.connect().send("SHUTDOWN")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"process {server.pid} exited during apply" in err
    held.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_apply_releases_the_target(builds, server, sig):
    held = server.connect()
    held.send("HOLD")
    proc = _apply_in_background(server, builds.modules["hold-reply"])
    start = time.monotonic()
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert proc.returncode == 128 + sig, err
    assert err.count("\n") == 1 and "Traceback" not in err and f"interrupted by {sig.name}" in err
    assert server.ask("RELEASE") == ["OK"]
    assert held.file.readline().strip() == "RELEASED"  # the old code, still
    assert_untouched(server)
    held.close()


@pytest.mark.slow  # waits out patch-ctl's stop limit
def test_thread_that_cannot_stop(builds, server):
    """A worker in vfork() waits where no ptrace interrupt reaches it: patch-ctl gives up after its limit,
    one line, exit 1, and the process runs on untraced once patch-ctl has exited."""
    spawner = server.connect()
    spawner.send("SPAWN 8000")  # longer than patch-ctl takes to start and give up
    time.sleep(0.3)
    start = time.monotonic()
    run = patch_ctl("apply", "-p", server.pid, builds.modules["incr-fix"])
    assert_one_line_error(run, 1, "did not stop")
    assert time.monotonic() - start < 30
    assert spawner.file.readline().strip() == "OK"  # the vfork child exited: the worker carries on
    assert_untouched(server)
    spawner.close()


def test_revert_usage(server):
    assert_one_line_error(patch_ctl("revert", "-p", server.pid, "nosuchpatch"), 2, "no patch nosuchpatch")
    assert_one_line_error(patch_ctl("revert", "-p", server.pid), 2, "NAME or --all")
    run = patch_ctl("revert", "-p", server.pid, "--all")
    assert run.returncode == 0 and run.stdout.strip() == f"no patches in process {server.pid}"
    assert_untouched(server)
