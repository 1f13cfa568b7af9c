"""Moved line numbers are no change: code that differs from the original only in the `__LINE__` values it passes
on (to a reporting function, in a "file:line" string) does the same thing, on lines the patch moved.

Two kinds of evidence, either enough:
- the patch's hunks (`LineShifts`, from `report.patches.line_shifts`): a changed immediate, or a number in a
  string, that equals an original line outside the hunks on one side and that line's new number on the other,
  in a file the patch changes. This needs no list of functions: it covers a function of the program's own that
  takes `__LINE__`, and variadic reporters (the printk family, `__warn_printk`), where a list cannot tell a line
  from any other integer argument;
- without the patch (`patch-diff` without `--patch`), kpatch's way: an immediate loaded into the line argument of
  a known reporting function with a fixed line parameter (`LINE_ARGUMENT`), and the number of a "FILE.c:LINE"
  string (fortify's "field ... at FILE:LINE").
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from patch_build.diffobj.arch import x86_64 as arch

# Reporting functions with a line-number parameter, by its position (0-based).
LINE_ARGUMENT = {
    "__might_sleep": 1, "___might_sleep": 1, "__might_resched": 1, "__might_fault": 1, "__cant_sleep": 1,
    "__cant_migrate": 1, "lockdep_rcu_suspicious": 1, "warn_slowpath_fmt": 1, "__btrfs_abort_transaction": 2,
    "__assert_fail": 2, "__assert_perror_fail": 2,
}
_NUMBERS = re.compile(rb"\d+")
_FILE_LINE = re.compile(rb"\.[ch]:$")  # what precedes the line number of a "FILE.c:LINE" string


@dataclass(frozen=True)
class Hunk:
    """One hunk of a patch, by its unified-diff header, and its context lines (old line -> new line)."""
    old_start: int
    old_length: int
    new_start: int
    new_length: int
    context: dict[int, int] = field(default_factory=dict)

    @property
    def first_old(self) -> int:
        # An empty side's start names the line before the hunk (`@@ -10,0 +11,3 @@` inserts after line 10).
        return self.old_start + (0 if self.old_length else 1)

    @property
    def shift(self) -> int:
        """How far the lines after the hunk move."""
        return (self.new_start + (0 if self.new_length else 1) + self.new_length) - (self.first_old + self.old_length)


def _through(hunks: tuple[Hunk, ...], old: int) -> int | None:
    """Line `old` after one patch's hunks of its file (in order); None when they remove or change it."""
    i = bisect.bisect_right([h.first_old for h in hunks], old) - 1
    if i < 0:
        return old
    h = hunks[i]
    if old < h.first_old + h.old_length:
        return h.context.get(old)
    return old + h.shift


@dataclass(frozen=True)
class LineShifts:
    """Where the patches moved each unchanged line: path -> each patch's hunks of it, patches in order."""
    files: dict[str, tuple[tuple[Hunk, ...], ...]]

    def new_line(self, path: str, old: int) -> int | None:
        """The new number of original line `old` of `path`; None for a line a patch removed or changed."""
        line: int | None = old
        for hunks in self.files.get(path, ()):
            line = _through(hunks, line)
            if line is None:
                break
        return line

    def moved(self, old: int, new: int) -> bool:
        """Whether some file of the patch has an unchanged line `old` that it moved to `new`."""
        return old != new and any(self.new_line(path, old) == new for path in self.files)


def only_lines_differ(old: bytes, new: bytes, calls_old: dict[int, str], calls_new: dict[int, str],
                      shifts: LineShifts | None) -> bool:
    """Two same-size code bodies that differ only in line numbers they load (see the module's docstring)."""
    changes = arch.immediate_changes(old, new, calls_old, calls_new)
    return bool(changes) and all(_is_moved_line(c, shifts) for c in changes)


def _is_moved_line(change: arch.ImmediateChange, shifts: LineShifts | None) -> bool:
    if shifts is not None and shifts.moved(change.old, change.new):
        return True
    position = LINE_ARGUMENT.get(change.next_call or "")
    return position is not None and change.register == arch.ARGUMENT_REGISTERS[position]


def only_line_in_text_differs(old: bytes, new: bytes, shifts: LineShifts | None) -> bool:
    """Two strings that differ only in the line of "FILE.c:LINE" references the patch moved (or, without the
    patch, in any such line)."""
    old_parts, new_parts = _NUMBERS.split(old), _NUMBERS.split(new)
    if old_parts != new_parts:
        return False
    numbers = zip(_NUMBERS.findall(old), _NUMBERS.findall(new))
    pairs = [(int(a), int(b), old_parts[i]) for i, (a, b) in enumerate(numbers) if a != b]
    return bool(pairs) and all(_FILE_LINE.search(before) and (shifts is None or shifts.moved(a, b))
                               for a, b, before in pairs)
