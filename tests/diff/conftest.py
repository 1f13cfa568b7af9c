"""Shared fixtures of the differ tests; the helpers live in support/diffcases.py."""
from __future__ import annotations

import pytest

from support.diffcases import Fixtures, fixture_names


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> Fixtures:
    """Fixture pairs by name, each compiled and diffed at most once per session."""
    cases = Fixtures(tmp_path_factory.mktemp("diff-fixtures"))
    cases.compile_all(fixture_names())
    return cases
