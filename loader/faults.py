"""Fault injection for the loader's own tests: make the N-th pass through a named point of apply or revert
fail in a chosen way, so that each step's failure handling is shown deterministically, not by timing.

PATCH_CTL_FAULT=POINT[@N]:ACTION, ACTION one of
  signal       SIGTERM to patch-ctl itself (held until a safe point, like a real Ctrl-C or `timeout`)
  kill         SIGKILL to patch-ctl itself (nothing of ours runs after it)
  kill-target  SIGKILL to the target process
  error        an I/O error at that point (what a failing write or remote call raises)
  stall        3 s asleep at that point (a daemon busy elsewhere)
Unset (always, outside the tests) every point costs one dictionary lookup.
"""
from __future__ import annotations

import errno
import os
import signal
import time

ENV = "PATCH_CTL_FAULT"
ACTIONS = ("signal", "kill", "kill-target", "error", "stall")
STALL = 3.0


def _parse(spec: str | None) -> tuple[str, int, str] | None:
    if not spec:
        return None
    where, _, action = spec.rpartition(":")
    point, _, nth = where.partition("@")
    if action not in ACTIONS or not point or (nth and not nth.isdigit()):
        raise SystemExit(f"patch-ctl: error: {ENV}={spec!r}: expected POINT[@N]:{'|'.join(ACTIONS)}")
    return point, int(nth or 1), action


_spec = _parse(os.environ.get(ENV))
_passes: dict[str, int] = {}


def point(name: str, pid: int = 0) -> None:
    """A step of apply, revert or the daemon; `pid` is the target."""
    if _spec is None or _spec[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != _spec[1]:
        return
    action = _spec[2]
    if action == "signal":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # not reached: the kernel delivers it on the way back from kill()
    elif action == "kill-target":
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
    elif action == "stall":
        time.sleep(STALL)
    else:
        raise OSError(errno.EIO, f"injected fault at {name}")


def _wait_gone(pid: int) -> None:
    """Until the killed target's threads have all exited (a zombie waiting for its parent counts as gone)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.005)
