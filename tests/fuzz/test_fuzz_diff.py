"""patch-diff on mutated objects: whatever the input, a clean outcome (exit 0-3, no traceback, one error
line, no raw control characters, no hang). A fixed seed keeps the run reproducible; `bench/fuzz_soak.py`
runs many more inputs by hand."""
from __future__ import annotations

import pytest

from support.fuzzcampaigns import DIFF_PAIRS, diff_campaign
from support.fuzzing import describe

SEED = 20261130


@pytest.mark.slow
def test_patch_diff_survives_mutated_objects(tmp_path):
    counts, failures = diff_campaign(tmp_path, SEED)
    assert not failures, f"{len(failures)} bad outcomes, first ones:\n" + "\n".join(
        describe(*f) for f in failures[:5])
    assert sum(counts.values()) == sum(DIFF_PAIRS.values())
    # The mutants must reach past the header checks: many are still diffed to a patch, many rejected.
    assert counts["exit 2"] > 100 and counts["exit 0"] > 50, counts
