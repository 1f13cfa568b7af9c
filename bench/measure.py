"""What the benchmarks share: one process's CPU time and peak memory from its own rusage, and the
environment their Python children run in (bytecode cached, as an installed package has it)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(pycache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# Runs the measured command and reports its exit code, CPU time and peak RSS. The command is started from
# this small process, not from the benchmark: a forked child's peak RSS counts its parent's pages from
# before its exec, and the benchmark holds the loader, the differ and the targets' data.
_TRAMPOLINE = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, usage.ru_maxrss]))
"""


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[int, float, int, str]:
    """(exit code, CPU seconds, peak RSS in KiB, the end of its stderr) of one process."""
    with tempfile.TemporaryFile() as err:
        run = subprocess.run([sys.executable, "-c", _TRAMPOLINE, *cmd], env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=err, text=True)
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace")
    if run.returncode:
        raise SystemExit(f"measuring {shlex.join(cmd)} failed:\n{tail}")
    code, cpu, rss = json.loads(run.stdout)
    return code, cpu, rss, tail


def best_of(repeat: int, cmd: list[str], env: dict | None = None, cwd: Path | None = None,
            expect: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Best CPU time and peak RSS (KiB) over `repeat` runs (CPU, not wall: the machine may be shared)."""
    times, peak = [], 0
    for _ in range(repeat):
        code, cpu, rss, err = run_measured(cmd, env, cwd)
        if code not in expect:
            raise SystemExit(f"{shlex.join(cmd)} exited {code}:\n{err}")
        times.append(cpu)
        peak = max(peak, rss)
    return min(times), peak
