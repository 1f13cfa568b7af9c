"""Fault injection at every step of apply and revert (loader/faults.py): a signal, patch-ctl killed, the
target killed, or an I/O error, at each remote call, each write, the commit and the bookkeeping. Whatever
happens, the target is afterwards fully patched or fully original, running, untraced and as `list` says;
after a killed patch-ctl, the next one (here `list`) finishes what it left. Deterministic: each case names
the pass through the point where it strikes.

The module is `both`: two targets (the server and its library), so two mappings and two jumps, and a
half-done commit would show as one fixed function without the other."""
from __future__ import annotations

import itertools
import json
import signal
import subprocess

import pytest

from livetarget import Run, Server, patch_ctl, patch_ctl_argv, patch_ctl_env

pytestmark = pytest.mark.slow  # ~70 cases, a patch-ctl start or three each: about 3 minutes

_keys = itertools.count()

# (point, its pass) of an apply, in order; those from COMMIT on come once the jumps are being written
APPLY_POINTS = [("remote-call", 1), ("remote-call", 3), ("mapped", 1), ("written", 1), ("remote-call", 5),
                ("protected", 1), ("commit-record", 1), ("commit-write", 1), ("commit-write", 2),
                ("commit-done", 1)]
COMMIT = APPLY_POINTS.index(("commit-record", 1))
REVERT_POINTS = [("revert-record", 1), ("revert-write", 1), ("revert-write", 2), ("revert-done", 1),
                 ("remote-call", 1), ("unmapped", 1), ("unmapped", 2)]
RESTORED = REVERT_POINTS.index(("revert-done", 1))  # from here on the original code is back


def behaviour(server: Server) -> str:
    """'patched' (INCR adds 1, SUM counts every byte), 'original' (adds 2, leaves the last byte out), or
    what mixture was found."""
    got = (server.ask(f"INCR fault{next(_keys)}")[0], server.ask("SUM ab")[0])
    return {("VALUE 1", "VALUE 195"): "patched", ("VALUE 2", "VALUE 97"): "original"}.get(got, f"mixed {got}")


def listed(server: Server) -> list[str]:
    run = patch_ctl("list", "-p", server.pid, "--json")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    return [f"{p['module']}:{p['state']}" for p in json.loads(run.stdout)["patches"]]


def with_fault(fault: str, *args) -> Run:
    proc = subprocess.run(patch_ctl_argv(*args), capture_output=True, text=True, timeout=60,
                          env=dict(patch_ctl_env(), PATCH_CTL_FAULT=fault))
    return Run(proc.returncode, proc.stdout, proc.stderr)


def one_line(run: Run, code: int, fragment: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert "Traceback" not in run.stderr and len(lines) == 1 and fragment in lines[0], run.stderr


def settled(server: Server, expect: str) -> None:
    """`list` (which finishes what a killed patch-ctl left) names what the target runs; the target runs
    untraced, behaves as `expect`, and its maps agree."""
    assert listed(server) == (["both:active"] if expect == "patched" else [])
    server.assert_running_untraced()
    assert behaviour(server) == expect
    memfds = {line.split()[4] for line in server.patch_mappings()}  # one inode a mapping, however split
    assert len(memfds) == (2 if expect == "patched" else 0)


def cases(points):
    return [pytest.param(p, n, action, id=f"{p}@{n}-{action}")
            for p, n in points for action in ("signal", "kill", "kill-target", "error")
            if not (action == "error" and p.endswith("-done"))]  # nothing can fail after the last write


@pytest.mark.parametrize("point,nth,action", cases(APPLY_POINTS))
def test_apply_fault(builds, server, point, nth, action):
    committed = APPLY_POINTS.index((point, nth)) >= COMMIT
    run = with_fault(f"{point}@{nth}:{action}", "apply", "-p", server.pid, builds.modules["both"])
    if action == "kill-target":
        one_line(run, 2, f"process {server.pid} exited during apply")
        return
    if action == "kill":
        assert run.returncode == -signal.SIGKILL, run.stderr
        # Before anyone cleans up: original until the first jump, patched once both are written. Between
        # the two jumps (commit-write@1) the process is half patched until the next patch-ctl runs.
        if (point, nth) != ("commit-write", 1):
            both = (point, nth) in (("commit-write", 2), ("commit-done", 1))
            assert behaviour(server) == ("patched" if both else "original")
        # `list` finishes the rest: a commit not recorded as done is reverted
        settled(server, "patched" if point == "commit-done" else "original")
        return
    if action == "signal":
        if committed:  # too late to stop: the apply completes, and says it was interrupted after that
            one_line(run, 128 + signal.SIGTERM, "after the point of no return: the patch stays applied")
            settled(server, "patched")
        else:
            one_line(run, 128 + signal.SIGTERM, "interrupted by SIGTERM")
            settled(server, "original")
        return
    one_line(run, 1, f"injected fault at {point}")
    settled(server, "original")


@pytest.mark.parametrize("point,nth,action", cases(REVERT_POINTS))
def test_revert_fault(builds, server, point, nth, action):
    assert patch_ctl("apply", "-p", server.pid, builds.modules["both"]).returncode == 0
    restored = REVERT_POINTS.index((point, nth)) >= RESTORED
    run = with_fault(f"{point}@{nth}:{action}", "revert", "-p", server.pid, "both")
    if action == "kill-target":
        one_line(run, 2, f"process {server.pid} exited during revert")
        return
    if action == "kill":
        assert run.returncode == -signal.SIGKILL, run.stderr
        if point != "revert-write":
            assert behaviour(server) == ("original" if restored else "patched")
        settled(server, "original")  # `list` finished the revert
        return
    if action == "signal":
        if restored or point.startswith("revert-"):
            one_line(run, 128 + signal.SIGTERM, "after the point of no return: the revert is complete")
        else:
            one_line(run, 128 + signal.SIGTERM, "interrupted by SIGTERM")
        settled(server, "original")
        return
    one_line(run, 1, f"injected fault at {point}")
    settled(server, "original" if restored else "patched")
