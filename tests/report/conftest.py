"""Fixtures for the report tests (helpers in reportenv.py)."""
from __future__ import annotations

import pytest
from reportenv import Built, build_pair, diff_and_report


@pytest.fixture(scope="session")
def fix_build(tmp_path_factory) -> Built:
    return build_pair(tmp_path_factory.mktemp("fix"), "fix.patch")


@pytest.fixture(scope="session")
def fix_report(fix_build):
    return diff_and_report(fix_build)[1]
