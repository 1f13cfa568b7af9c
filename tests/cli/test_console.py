"""What every console script shares (diffobj/entry.py, diffobj/console.py): a signal at any moment of its
life, from the first line of its entry point on (start-up imports included), gives one line and exit
128+signal (or, once the command's outcome is settled, that outcome); `--version`; shell completion.
Before the entry point runs, the interpreter's own start-up (milliseconds) has Python's default handling."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

COMMANDS = {  # module run with `python -m`, and arguments that fail fast as bad input (exit 2)
    "patch-ctl": ("patch_build.loader", ["info", "/etc/hostname"]),
    "patch-diff": ("patch_build.diffobj", ["/etc/hostname", "/etc/hostname", "-o", "/dev/null"]),
    "patch-report": ("patch_build.report", ["/etc/hostname"]),
    "patch-build": ("patch_build.kbuild", ["-s", "/nonexistent", "x.patch"]),
}


def run(prog: str, *args: str) -> subprocess.CompletedProcess:
    module, _ = COMMANDS[prog]
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)


def default_signals() -> None:
    """In the child, before exec: the signals the entry point handles at their defaults, whatever the test
    run inherited (under `nohup` SIGHUP is ignored, in a background job SIGINT, and the entry point rightly
    leaves an ignored signal ignored)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def handled(pid: int, last: signal.Signals = signal.SIGHUP) -> None:
    """Wait until the entry point has installed its handlers, or the process has exited: until it catches
    `last` (SigCgt in /proc/PID/status), SIGHUP, the last it installs and one the interpreter leaves alone
    (it catches SIGINT itself from its own start)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                caught = next(int(l.split()[1], 16) for l in f if l.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return
        if caught & (1 << (last - 1)):
            return
        time.sleep(0.001)


@pytest.mark.slow  # a dozen start-ups each: about 20 s
@pytest.mark.parametrize("prog", sorted(COMMANDS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_start_up(prog, sig):
    """Sent at moments spread over the start-up (imports of typer, lief, capstone) and the run, counted from
    when the entry point has installed its handler: before this was handled, a signal during an import
    aborted with a C++ and Python traceback (SIGABRT)."""
    module, args = COMMANDS[prog]
    outcomes = set()
    for delay in (0.0, 0.05, 0.15, 0.35, 0.7):
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
        handled(proc.pid)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        lines = err.splitlines()
        assert "Traceback" not in err and len(lines) == 1, (delay, proc.returncode, err)
        assert lines[0].startswith(f"{prog}: error: "), err
        if proc.returncode == 128 + sig:
            assert lines[0] == f"{prog}: error: interrupted by {sig.name}"
        else:  # it had finished: its own outcome (bad input)
            assert proc.returncode == 2, (delay, proc.returncode, err)
        outcomes.add(proc.returncode)
    assert 128 + sig in outcomes  # the early signals did strike during start-up


def ignore_hangup() -> None:
    default_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


@pytest.mark.parametrize("prog", ["patch-diff", "patch-ctl"])
def test_ignored_hangup_stays_ignored(prog):
    """Started under `nohup` (SIGHUP ignored), a command outlives its terminal: a hangup does not stop it."""
    module, args = COMMANDS[prog]
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=ignore_hangup)
    handled(proc.pid, last=signal.SIGTERM)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "interrupted" not in err, (proc.returncode, err)  # its own outcome: bad input


COMPLETIONS = {"patch-ctl": ("ap", "apply"), "patch-diff": ("--rep", "--report"),
               "patch-report": ("--for", "--format"), "patch-build": ("--no-b", "--no-build-changes")}


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_version_and_completion(prog):
    version = run(prog, "--version")
    assert version.returncode == 0 and version.stdout.split()[0] == prog and version.stdout.split()[1][0].isdigit()
    # what bash's completion function asks (Typer's protocol), whatever shell runs the tests
    typed, expected = COMPLETIONS[prog]
    module, _ = COMMANDS[prog]
    env = dict(os.environ, COMP_WORDS=f"{prog} {typed}", COMP_CWORD="1")
    env[f"_{prog.upper().replace('-', '_')}_COMPLETE"] = "complete_bash"
    done = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.split() == [expected], done
