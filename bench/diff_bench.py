"""Differ benchmark: diff time and peak memory for units of 100, 1,000 and 10,000 functions, one changed.

Run by hand (`make bench` or `python3 bench/diff_bench.py [COUNTS...]`); prints a table. Each diff runs in
a fresh subprocess so the figures are its own: time of `diff_objects` alone (imports excluded), time of
`diff_objects` plus writing OUT.o, and the peak resident set size of the process (ru_maxrss) after
subtracting the size it had once the imports were done. Target: the 1,000-function pair in under 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the generator and compile helper the tests use

from support import generate, toolchain  # noqa: E402

TARGET_COUNT, TARGET_SECONDS = 1000, 1.0
CFLAGS = ["-O2"]

# Runs in the child: imports first (not timed), then the diff, several times, best time kept.
CHILD = r"""
import json, resource, sys, time
from diffobj.diff import DiffOptions, diff_objects
orig, patched, out, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best_diff = best_total = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    result = diff_objects(orig, patched, DiffOptions(objname="bench"))
    t1 = time.perf_counter()
    result.write(out)
    t2 = time.perf_counter()
    best_diff, best_total = min(best_diff, t1 - t0), min(best_total, t2 - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"diff": best_diff, "total": best_total, "rss_kb": peak, "base_kb": base_rss,
                  "changed": [c.name for c in result.changed_functions], "errors": len(result.errors)}))
"""


def build_pair(count: int, workdir: Path) -> tuple[Path, Path]:
    changed = count // 2
    (workdir / "orig.c").write_text(generate.many_functions(count))
    (workdir / "patched.c").write_text(generate.many_functions(count, changed=changed))
    orig, patched = toolchain.compile_objects([(workdir / "orig.c", workdir / "orig.o", CFLAGS),
                                              (workdir / "patched.c", workdir / "patched.o", CFLAGS)])
    return orig, patched


def measure(orig: Path, patched: Path, out: Path, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", CHILD, str(orig), str(patched), str(out), str(repeat)],
                         capture_output=True, text=True, env=env)
    if run.returncode:
        raise SystemExit(f"diff_bench: the differ failed on {orig}:\n{run.stderr}")
    return json.loads(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="diffs per size; the best time is kept")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="diff-bench-") as tmp:
        for count in args.counts:
            work = Path(tmp) / str(count)
            work.mkdir()
            print(f"compiling {count:,} functions twice (gcc {' '.join(CFLAGS)}) ...", file=sys.stderr, flush=True)
            orig, patched = build_pair(count, work)
            m = measure(orig, patched, work / "out.o", args.repeat)
            expected = [f"f{count // 2}"]
            if m["changed"] != expected or m["errors"]:
                raise SystemExit(f"diff_bench: wrong result for {count}: changed {m['changed']}, "
                                 f"{m['errors']} errors (expected {expected})")
            rows.append((count, orig.stat().st_size, m))

    print(f"{'functions':>10} {'object':>10} {'diff':>9} {'diff+write':>11} {'peak RSS':>10} {'diff RSS':>10}")
    for count, size, m in rows:
        print(f"{count:>10,} {size / 1024:>8.0f}KB {m['diff']:>8.3f}s {m['total']:>10.3f}s "
              f"{m['rss_kb'] / 1024:>8.1f}MB {(m['rss_kb'] - m['base_kb']) / 1024:>8.1f}MB")
    for count, _, m in rows:
        if count == TARGET_COUNT:
            verdict = "met" if m["total"] < TARGET_SECONDS else "MISSED"
            print(f"target: {TARGET_COUNT:,}-function pair in under {TARGET_SECONDS:.0f} s: {verdict} "
                  f"({m['total']:.3f} s)")


if __name__ == "__main__":
    main()
