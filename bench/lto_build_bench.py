#!/usr/bin/env python3
"""redis built as it is deployed with LTO (-O3 -flto, see tests/support/debian_redis.py): the time of the patch
build of an upstream fix (fixtures/build/redis-bitcount-args.patch, diffed at the link) against one ordinary `make`
of the same program from a clean tree. Run by hand: `python3 bench/lto_build_bench.py [-j JOBS]`.

The patch build runs the project's build twice (the original from a clean copy, then the patched rebuild, which
recompiles one unit and redoes the LTO link) and diffs the two links; the ordinary make is the first of those.
Uses the redis cache of the tests (~/.cache/patch-build/redis) and builds in a scratch directory.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from patch_build.kbuild.options import BuildOptions  # noqa: E402
from patch_build.kbuild.userspace import build_user_patch  # noqa: E402
from support.debian_redis import BUILD_CMD, FIX, TARGET, redis_tree  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    tree = redis_tree()
    with tempfile.TemporaryDirectory(prefix="lto-bench-") as tmp:
        plain = Path(tmp) / "redis"
        subprocess.run(["cp", "-a", str(tree.source), str(plain)], check=True)
        start = time.monotonic()
        subprocess.run(["sh", "-c", BUILD_CMD], cwd=plain, check=True, capture_output=True,
                       env=dict(os.environ, MAKEFLAGS=f"-j{args.jobs}"))
        make = time.monotonic() - start
        start = time.monotonic()
        result = build_user_patch(BuildOptions(patches=[FIX], srcdir=tree.built, targets=[TARGET], build_cmd=BUILD_CMD,
                                               outdir=Path(tmp), jobs=args.jobs, only_explained=True))
        total = time.monotonic() - start
    t = result.timings
    print(f"redis {tree.version}, `{BUILD_CMD}`, -j{args.jobs}: {len(result.functions)} function(s) replaced "
          f"({', '.join(result.functions)})")
    print(f"  {'ordinary make':<16} {make:8.1f} s")
    for step in ("copy", "original build", "patched build", "diff", "link", "report"):
        print(f"  {step:<16} {t.get(step, 0):8.1f} s")
    print(f"  {'patch build':<16} {total:8.1f} s = {total / make:.2f} x one ordinary make")


if __name__ == "__main__":
    main()
