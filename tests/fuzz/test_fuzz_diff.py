"""patch-diff on mutated objects: whatever the input, a clean outcome (exit 0-3, no traceback, one error
line, no raw control characters, no hang). A fixed seed keeps the run reproducible; `bench/fuzz_soak.py`
runs many more inputs by hand."""
from __future__ import annotations

import collections

import pytest

from support.diffcases import OBJNAME, Fixtures, load_manifest
from support.fuzzing import Runner, check_outcome, describe, mutations

SEED = 20261130
# Pairs that between them hold most of what the reader and the passes handle: plain C, C++ with
# exceptions (.eh_frame, LSDA, COMDAT groups), PIC, TLS, kernel mode (fentry, special sections) and DWARF
# (-g, read by --report).
PAIRS = {
    "call_target_change": 70,
    "cpp_exceptions": 90,
    "cpp_virtual_pic": 60,
    "tls_variable": 50,
    "kernel_fentry_change": 80,
    "static_local_counter": 90,
    "unchanged_callee_O0": 60,
}


def diff_jobs(root):
    """(name, argv builder, original bytes, patched bytes, count) per fixture pair."""
    fixtures = Fixtures(root)
    fixtures.compile_all(list(PAIRS))
    for name, count in PAIRS.items():
        fx, manifest = fixtures[name], load_manifest(name)
        extra = ["--objname", OBJNAME]
        if manifest.get("kernel"):
            extra.append("--kernel")
        if "-g" in manifest["cflags"]:
            extra += ["--report", str(root / "report.json")]
        yield name, fx.orig, fx.patched, extra, count


def run_diff_fuzz(root, seed: int, scale: float = 1.0):
    """Counts per outcome kind and the failures ((mutation, outcome, problems)) of one fuzzing run."""
    counts, failures = collections.Counter(), []
    mutant, out = root / "mutant.o", root / "out.o"
    with Runner("diffobj.cli", "patch-diff") as run:
        for name, orig, patched, extra, count in diff_jobs(root):
            orig_bytes, patched_bytes = orig.read_bytes(), patched.read_bytes()
            for i, (what, blob) in enumerate(mutations(patched_bytes, seed, int(count * scale),
                                                       partner=orig_bytes)):
                mutant.write_bytes(blob)
                # Mostly the patched object, every fourth run the original: both are read the same way.
                pair = [str(mutant), str(patched)] if i % 4 == 3 else [str(orig), str(mutant)]
                outcome = run([*pair, "-o", str(out), *extra])
                counts[outcome.kind] += 1
                problems = check_outcome(outcome, "patch-diff")
                if problems:
                    failures.append((f"{name}: {what}", outcome, problems))
    return counts, failures


@pytest.mark.slow
def test_patch_diff_survives_mutated_objects(tmp_path):
    counts, failures = run_diff_fuzz(tmp_path, SEED)
    assert not failures, f"{len(failures)} bad outcomes, first ones:\n" + "\n".join(
        describe(*f) for f in failures[:5])
    assert sum(counts.values()) == sum(PAIRS.values())
    # The mutants must reach past the header checks: many are still diffed to a patch, many rejected.
    assert counts["exit 2"] > 100 and counts["exit 0"] > 50, counts
