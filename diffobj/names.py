"""Symbol and section names as the compiler numbers them.

gcc appends `.constprop.N`, `.isra.N`, `.part.N`, `.cold`, `.lto_priv.N` to clones and `.N` to static
locals and generated tables; N can differ between two builds of the same unit. A name's *pattern*
replaces each number with `*`, so `foo.constprop.0` and `foo.constprop.3` match but `foo.isra.0` does not.
"""
from __future__ import annotations

import re

_NUMBER = re.compile(r"\.\d+")
_CHILD = re.compile(r"\.(cold|part\.\d+)")


def pattern(name: str) -> str:
    return _NUMBER.sub(".*", name)


def is_numbered(name: str) -> bool:
    """A compiler-numbered name (`counter.1`, `CSWTCH.7`), not a plain C identifier."""
    return not name.startswith(".") and bool(_NUMBER.search(name))


def parent_name(name: str) -> str | None:
    """The function a `.cold` or `.part.N` piece was split from, or None."""
    m = _CHILD.search(name)
    return name[: m.start()] if m and m.start() > 0 else None


def is_cold_piece(name: str) -> bool:
    """A `.cold` piece is jumped into from its parent, never called: it is not redirected itself."""
    return ".cold" in name and parent_name(name) is not None
