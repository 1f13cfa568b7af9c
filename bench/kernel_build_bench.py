"""Kernel build timing (issue 10 targets): from a freshly unpacked Debian source tree to a loadable .ko for a
one-file fix (< 60 s), and again on the prepared tree (< 15 s), per kernel line.

Run by hand: python3 bench/kernel_build_bench.py [--line 6.1 ...]

Uses the cached packages of the kernel tests (~/.cache/patch-build/kernel, made by tests/kernel/debian_kernel.py)
and unpacks a scratch copy of the source, so the test cache is left alone. Wall time depends on what else the
machine runs: the CPU seconds (patch-build and everything it ran) and the load average are printed beside it.

Measured on the 2-CPU test machine (shared; load average 1.5 before and after each run), meminfo-string.patch,
seconds wall / CPU:

    line  unpack linux-source   patch-build, unprepared tree   patch-build, prepared tree
    6.1   11.5 / 14.0           11.5 / 14.6 (prepare 5.6)       4.0 / 3.9
    6.12  10.3 / 17.3           26.0 / 37.6 (prepare 18.1)      7.1 / 7.5

On 6.12, prepare takes 18 s (6.1: 6) and each unit build 2 s (6.1: under 1 on a prepared tree); the link 2 s on
both. Under load the wall times grow, not the CPU: 6.12 with the load rising from 1.5 to 6 took 53 s and 14 s wall (35 and 7 s of CPU).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [os.fspath(ROOT / "tests"), os.fspath(ROOT / "tests" / "kernel")]  # support.*, debian_kernel

from debian_kernel import CACHE, LINES, KernelEnv, kernel_env  # noqa: E402

from patch_build.kbuild.kernel import build_kernel_patch  # noqa: E402
from patch_build.kbuild.options import BuildOptions  # noqa: E402

PATCH = ROOT / "fixtures" / "kernel" / "meminfo-string.patch"
TARGETS = {"unprepared tree": 60.0, "prepared tree": 15.0}  # seconds, wall


def _cpu() -> float:
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _build(env: KernelEnv, tree: Path, out: Path) -> tuple[float, float, dict[str, float], bytes]:
    """One patch-build of PATCH: wall seconds, CPU seconds, seconds per step, the module."""
    own = PATCH.parent / env.line / PATCH.name  # the line's own version where its sources differ
    options = BuildOptions(patches=[own if own.is_file() else PATCH], srcdir=tree, outdir=out, config=env.config, system_map=env.kallsyms,
                           headers=env.headers)
    start, cpu = time.monotonic(), _cpu()
    result = build_kernel_patch(options)
    return time.monotonic() - start, _cpu() - cpu, result.timings, result.module.read_bytes()


def bench(line: str) -> list[tuple[str, float, float, str]]:
    env = kernel_env(line)
    deb = sorted((CACHE / "debs").glob(f"linux-source-*_{env.version}_all.deb"))[-1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kbench-") as tmp:
        tree, out = Path(tmp, "linux"), Path(tmp, "out")
        tree.mkdir()
        start, cpu = time.monotonic(), _cpu()
        subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' "
                       f"| xz -dc -T0 | tar -x --strip-components=1 -C '{tree}'", shell=True, check=True)
        rows.append((f"{line}: unpack linux-source {env.version}", time.monotonic() - start, _cpu() - cpu, ""))
        modules = set()
        for what, target in TARGETS.items():
            wall, cpu, steps, module = _build(env, tree, out)
            modules.add(module)
            detail = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
            rows.append((f"{line}: patch-build, {what} (target < {target:.0f})", wall, cpu, detail))
        shutil.rmtree(tree)
        # The shortened prepare must not change the module: compare with the test tree's, which a full
        # `make olddefconfig prepare` prepared.
        modules.add(_build(env, env.source, out)[3])
        if len(modules) != 1:
            raise SystemExit(f"{line}: the module differs from the one built on {env.source}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", action="append", choices=sorted(LINES), help="kernel line (default: all)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = [row for line in args.line or sorted(LINES) for row in bench(line)]
    print(f"{'step':<58}{'wall s':>8}{'CPU s':>8}  steps (wall s)")
    for name, wall, cpu, detail in rows:
        print(f"{name:<58}{wall:>8.1f}{cpu:>8.1f}  {detail}")
    print(f"(load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
