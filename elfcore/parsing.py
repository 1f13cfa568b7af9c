"""What pyelftools raises on a malformed file, for the readers to turn into one clear error."""
from __future__ import annotations

import struct
from functools import cache


@cache
def pyelftools_errors() -> tuple[type[Exception], ...]:
    """pyelftools' own errors, and whatever its reading of a field runs into: it parses lazily, deep in its
    parsers, with values it does not check (a line program's line_range of 0 is divided by; an attribute in a form it has no reading for raises
    NotImplementedError). Imported at the
    first call (`patch-ctl list` makes none)."""
    from elftools.common.exceptions import DWARFError, ELFError
    from elftools.construct import ConstructError

    return (ELFError, DWARFError, ConstructError, struct.error, ValueError, IndexError, KeyError, TypeError,
            AttributeError, OverflowError, ZeroDivisionError, NotImplementedError, AssertionError,
            RecursionError)
