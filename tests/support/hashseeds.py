"""Run the real `patch-diff` under several PYTHONHASHSEED values: its output must not depend on them."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.diffcases import patch_diff_command

# Set and dict orders of str keys and object ids differ from one seed to the next.
SEEDS = ("0", "1", "2", "1234567")


def patch_diff_outputs(orig: Path, patched: Path, workdir: Path, *options: str) -> dict[str, bytes]:
    """{seed: bytes of the object patch-diff wrote}, the runs started together; each must succeed."""
    procs = {}
    for seed in SEEDS:
        out = workdir / f"seed-{seed}.o"
        procs[seed] = (out, subprocess.Popen(
            [*patch_diff_command(), os.fspath(orig), os.fspath(patched), "-o", os.fspath(out), *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONHASHSEED=seed)))
    outputs = {}
    for seed, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"PYTHONHASHSEED={seed}: exit {proc.returncode}: {err}"
        outputs[seed] = out.read_bytes()
    return outputs
