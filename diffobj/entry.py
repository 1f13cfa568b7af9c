"""The console scripts' entry points: signal handling is in place before anything heavy is imported.

A signal that arrives while modules are still being imported (typer, capstone: up to a second) cannot be
unwound through safely (an exception raised inside a C++ extension's initialisation aborts the interpreter),
and nothing needs cleaning up then: the command says so in one line and exits at once. Later, SIGINT,
SIGTERM and SIGHUP raise `Interrupted` so that every `finally` runs (threads released, scratch trees
removed); code that must not be interrupted blocks them (loader.critical) and acts on them where it is safe.
"""
from __future__ import annotations

import importlib
import os
import signal

from patch_build.common.interrupts import HANDLED, Interrupted


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _exit_interrupted(prog: str, signum: int) -> None:
    os.write(2, f"{prog}: error: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def _handler(prog: str):
    def on_signal(signum, frame):
        if _importing(frame):
            _exit_interrupted(prog, signum)
        raise Interrupted(signum)

    return on_signal


def _run(prog: str, module: str) -> None:
    handler = _handler(prog)
    for signum in HANDLED:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # `nohup`, a background job: stay ignored
            signal.signal(signum, handler)
    try:
        importlib.import_module(module).main_entry()
    except Interrupted as e:  # between the import and the command's own handling
        _exit_interrupted(prog, e.signum)


def patch_build() -> None:
    _run("patch-build", "patch_build.kbuild.cli")


def patch_diff() -> None:
    _run("patch-diff", "patch_build.diffobj.cli")


def patch_ctl() -> None:
    _run("patch-ctl", "patch_build.loader.cli")


def patch_report() -> None:
    _run("patch-report", "patch_build.report.cli")
