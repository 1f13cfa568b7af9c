"""Fuzzing soak: many more mutated inputs than the test suite runs, with any seed (by hand, or `make soak`).

    python3 bench/fuzz_soak.py [INPUTS] [SEED]      (default 20,000 inputs, seed 1)

About 70% of the inputs go to patch-diff (mutated objects of several fixture pairs), 30% to patch-report
(structural and byte-level mutants of a full report). Prints the count of each outcome per command and
every failure (a hang, a crash, exit 4, a traceback, ...) with the mutation that caused it; exits 1 if
there was any. Same seed, same inputs: a failure reproduces with the seed and the mutant's number.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the harness and fixtures the tests use

from support.fuzzcampaigns import DIFF_PAIRS, diff_campaign, report_campaign, seed_report  # noqa: E402
from support.fuzzing import describe  # noqa: E402

DIFF_SHARE = 0.7


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="?", type=int, default=20000)
    parser.add_argument("seed", nargs="?", type=int, default=1)
    args = parser.parse_args()
    diff_inputs = round(args.inputs * DIFF_SHARE)
    report_inputs = args.inputs - diff_inputs
    failures = []
    with tempfile.TemporaryDirectory(prefix="fuzz-soak-") as tmp:
        root = Path(tmp)
        for command, campaign in (
                ("patch-diff", lambda d: diff_campaign(d, args.seed, diff_inputs / sum(DIFF_PAIRS.values()))),
                ("patch-report", lambda d: report_campaign(d, seed_report(d), args.seed,
                                                           structural=report_inputs * 3 // 4,
                                                           byte_level=report_inputs - report_inputs * 3 // 4))):
            work = root / command
            work.mkdir()
            start = time.monotonic()
            counts, found = campaign(work)
            seconds = time.monotonic() - start
            outcomes = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))
            print(f"{command}: {sum(counts.values())} inputs in {seconds:.0f} s; {outcomes}; "
                  f"{len(found)} failures", flush=True)
            failures += [(command, *f) for f in found]
    for command, what, outcome, problems in failures:
        print(f"\n{command}: " + describe(what, outcome, problems))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
