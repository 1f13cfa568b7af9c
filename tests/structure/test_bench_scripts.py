"""Every benchmark script starts as README.md says it runs (`.venv/bin/python bench/NAME.py`): it finds what it
imports and answers --help (kernel_build_bench.py once failed at its imports: tests/ was not on its path), also
under `python -P`, as the project's code runs (diff_bench.py and apply_bench.py once found bench/measure.py only
through the script's directory on sys.path, which -P leaves out)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "measure.py")  # measure.py: their shared helper


def test_the_benchmarks_are_found():
    assert "kernel_build_bench.py" in SCRIPTS and len(SCRIPTS) >= 5


@pytest.mark.parametrize("flags", [[], ["-P"]], ids=["plain", "-P"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_answers_help(script, flags):
    run = subprocess.run([sys.executable, *flags, str(BENCH / script), "--help"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout
