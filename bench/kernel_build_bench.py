"""Kernel build timing (issue 5 targets): from a freshly unpacked Debian source tree to a loadable .ko for a
one-file fix (< 3 min), and again on the prepared tree (< 30 s), for each Debian kernel line (or those named).
Run by hand: python3 bench/kernel_build_bench.py [6.1 6.12]

Uses the cached packages of the kernel tests (~/.cache/patch-build/kernel, made by tests/kernel/debian_kernel.py) and
unpacks a scratch copy of the source, so the test cache is left alone.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.fspath(ROOT / "tests" / "kernel"))

from debian_kernel import CACHE, LINES, kernel_env  # noqa: E402

PATCH = ROOT / "fixtures" / "kernel" / "meminfo-string.patch"


def _patch_build(env, tree: Path, out: Path) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "kbuild", "-s", os.fspath(tree), "-c", os.fspath(env.config),
                    "--system-map", os.fspath(env.kallsyms), "--headers", os.fspath(env.headers),
                    "-o", os.fspath(out), os.fspath(PATCH)], check=True, stdin=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    for line in sys.argv[1:] or LINES:
        bench(line)


def bench(line: str) -> None:
    env = kernel_env(line)
    deb = sorted((CACHE / "debs").glob(f"linux-source-*_{env.version}_all.deb"))[-1]
    with tempfile.TemporaryDirectory(prefix="kbench-") as tmp:
        tree, out = Path(tmp, "linux"), Path(tmp, "out")
        tree.mkdir()
        start = time.monotonic()
        subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' "
                       f"| xz -dc -T0 | tar -x --strip-components=1 -C '{tree}'", shell=True, check=True)
        unpack = time.monotonic() - start
        cold = _patch_build(env, tree, out)
        warm = _patch_build(env, tree, out)
        shutil.rmtree(tree)
    print(f"{'step':<44}{'seconds':>10}")
    print(f"{'unpack linux-source ' + env.version:<44}{unpack:>10.1f}")
    print(f"{'patch-build, unprepared tree (target < 180)':<44}{cold:>10.1f}")
    print(f"{'patch-build, prepared tree (target < 30)':<44}{warm:>10.1f}")
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
