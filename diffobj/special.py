"""Kernel special sections: keep only the entries that refer to included functions.

Called by `diffobj.diff.diff_objects` in kernel mode, after `include` has set `Section.included` on the
included code: for each special section to keep, set `included` and replace `data` and `relocations`
with the filtered entries (offsets rebased), so the output pass copies it like any other section.
Also adds a Problem for every changed function without an fentry call (ftrace cannot redirect it).
"""
from __future__ import annotations

from diffobj.model import ObjectFile
from diffobj.problems import Problems


def filter_special_sections(patched: ObjectFile, problems: Problems) -> None:
    """Placeholder until the kernel pass lands: keeps no special section."""
