"""Fuzzing campaigns over real inputs, shared by tests/fuzz (a fixed seed, a few hundred inputs) and
bench/fuzz_soak.py (any seed, many more): each returns counts per outcome kind and the failures, as
(what was mutated, outcome, problems)."""
from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path

from support.diffcases import OBJNAME, Fixtures, load_manifest, patch_diff_command
from support.fuzzing import Runner, check_outcome, json_mutations, mutations

# Pairs that between them hold most of what the reader and the passes handle: plain C, C++ with
# exceptions (.eh_frame, LSDA, COMDAT groups), PIC, TLS, kernel mode (fentry, special sections) and DWARF
# (-g, read by --report). Value: inputs per pair at scale 1.
DIFF_PAIRS = {
    "call_target_change": 70,
    "cpp_exceptions": 90,
    "cpp_virtual_pic": 60,
    "tls_variable": 50,
    "kernel_fentry_change": 80,
    "static_local_counter": 90,
    "unchanged_callee_O0": 60,
}
REPORT_FORMATS = ("md", "html", "json")


def diff_campaign(root: Path, seed: int, scale: float = 1.0):
    """patch-diff on mutants of each pair's objects: mostly the patched one, every fourth the original."""
    fixtures = Fixtures(root)
    fixtures.compile_all(list(DIFF_PAIRS))
    counts, failures = collections.Counter(), []
    mutant, out = root / "mutant.o", root / "out.o"
    with Runner("patch_build.diffobj.cli", "patch-diff") as run:
        for name, count in DIFF_PAIRS.items():
            fx, manifest = fixtures[name], load_manifest(name)
            extra = ["--objname", OBJNAME]
            if manifest.get("kernel"):
                extra.append("--kernel")
            if "-g" in manifest["cflags"]:
                extra += ["--report", str(root / "report.json")]
            orig, patched = fx.orig.read_bytes(), fx.patched.read_bytes()
            for i, (what, blob) in enumerate(mutations(patched, seed, round(count * scale), partner=orig)):
                mutant.write_bytes(blob)
                pair = [str(mutant), str(fx.patched)] if i % 4 == 3 else [str(fx.orig), str(mutant)]
                outcome = run([*pair, "-o", str(out), *extra])
                counts[outcome.kind] += 1
                problems = check_outcome(outcome, "patch-diff")
                if problems:
                    failures.append((f"{name}: {what}", outcome, problems))
    return counts, failures


def seed_report(root: Path) -> dict:
    """A real report (patch-diff --report on a -g pair) with every optional part of the model filled in."""
    fx = Fixtures(root)["static_local_counter"]
    path = root / "seed.report.json"
    subprocess.run([*patch_diff_command(), fx.orig, fx.patched, "-o", root / "seed.o", "--report", path,
                    "--objname", OBJNAME], check=True, capture_output=True)
    doc = json.loads(path.read_text())
    doc.update(targets=[{"name": "prog", "build_id": "ab" * 20, "kernel_release": None}],
               patches=[{"name": "fix.patch", "sha256": "00" * 32}],
               module={"path": "fix.kpatch", "sha256": "11" * 32, "size": 4096},
               details={"build command": "gcc -c unit.c"}, source_date_epoch=1700000000, message="built")
    obj = doc["objects"][0]
    obj["rejected"] = [{"symbol": "other", "reason": "changes data"}]
    obj["warnings"] = [{"kind": "differ", "symbol": "other", "message": "a warning"}]
    assert obj["functions"] and obj["diffs"] and obj["included"], "the seed must exercise every table"
    return doc


def report_campaign(root: Path, doc: dict, seed: int, structural: int, byte_level: int):
    """patch-report on structural mutants of `doc` and byte-level mutants of its text, in turn as md,
    html and json."""
    counts, failures = collections.Counter(), []
    path = root / "mutant.report.json"
    text = json.dumps(doc, indent=1).encode()
    inputs = [*json_mutations(doc, seed, structural), *mutations(text, seed, byte_level)]
    with Runner("patch_build.report.cli", "patch-report") as run:
        for i, (what, blob) in enumerate(inputs):
            path.write_bytes(blob)
            outcome = run([str(path), "--format", REPORT_FORMATS[i % len(REPORT_FORMATS)]])
            counts[outcome.kind] += 1
            problems = check_outcome(outcome, "patch-report")
            if problems:
                failures.append((what, outcome, problems))
    return counts, failures
