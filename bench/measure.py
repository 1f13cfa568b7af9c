"""What the benchmarks share: one process's CPU time and peak memory from its own rusage, and the
environment their Python children run in (bytecode cached, as an installed package has it)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(pycache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[int, float, int]:
    """(exit code, CPU seconds, peak RSS in KiB) of one process."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def best_of(repeat: int, cmd: list[str], env: dict | None = None, cwd: Path | None = None,
            expect: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Best CPU time and peak RSS (KiB) over `repeat` runs (CPU, not wall: the machine may be shared)."""
    times, peak = [], 0
    for _ in range(repeat):
        code, cpu, rss = run_measured(cmd, env, cwd)
        if code not in expect:
            raise SystemExit(f"{shlex.join(cmd)} exited {code}")
        times.append(cpu)
        peak = max(peak, rss)
    return min(times), peak
