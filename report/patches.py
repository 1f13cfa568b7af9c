"""The applied patch files, parsed once (unidiff): the files they touch and their hunks.

The one patch parser of the project: the builders ask it which files a patch touches, the report which
lines each hunk adds and removes (new-side numbers for added lines, old-side numbers for removed ones, so
each can be looked up in the object built from that side). Paths are as `patch -p1` applies them: the
first component of the `---`/`+++` name dropped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import unidiff

from patch_build.common.errors import InputError
from patch_build.diffobj.line_numbers import Hunk, LineShifts

MAX_PATCH_BYTES = 64 << 20  # a patch larger than this is not a live patch


@dataclass
class SourceHunk:
    patch: str  # the patch file's name
    path: str  # the file it changes, relative to the tree (-p1)
    header: str  # "@@ -a,b +c,d @@ section"
    text: list[str]  # the hunk's lines, each with its ' ', '+' or '-' prefix
    added: set[int] = field(default_factory=set)  # new-side line numbers of '+' lines
    removed: set[int] = field(default_factory=set)  # old-side line numbers of '-' lines
    # new-side lines where it adds or removes (a removal counts at the line after it)
    new_side: set[int] = field(default_factory=set)


def _strip(name: str) -> str:
    name = name.split("\t")[0].strip()
    return name.split("/", 1)[1] if "/" in name else name


def read_patch(patch: str | os.PathLike) -> unidiff.PatchSet:
    """The parsed patch; InputError naming the file when it cannot be read or is not a unified diff."""
    patch = Path(patch)
    try:
        with open(patch, "rb") as f:
            raw = f.read(MAX_PATCH_BYTES + 1)
    except OSError as e:
        raise InputError(f"patch {patch}: {e.strerror}") from None
    if len(raw) > MAX_PATCH_BYTES:
        raise InputError(f"patch {patch}: larger than {MAX_PATCH_BYTES >> 20} MiB")
    try:
        parsed = unidiff.PatchSet(raw.decode("utf-8", "replace"))
    except unidiff.UnidiffParseError as e:
        raise InputError(f"{patch.name} is not a patch: {e}") from None
    if not len(parsed):
        raise InputError(f"{patch.name} is not a patch: it names no file")
    return parsed


def file_path(patched_file: unidiff.PatchedFile) -> str:
    """The path a -p1 patch changes (a deleted file by its old name)."""
    target = patched_file.target_file
    return _strip(patched_file.source_file if target.split("\t")[0].strip() == "/dev/null" else target)


def touched_files(patch: str | os.PathLike) -> list[str]:
    """Files a -p1 patch changes, in patch order."""
    return [file_path(f) for f in read_patch(patch)]


def read_hunks(patches) -> list[SourceHunk]:
    """Every hunk of the patches, in order."""
    hunks = []
    for patch in patches:
        for patched_file in read_patch(patch):
            path = file_path(patched_file)
            for hunk in patched_file:
                header = f"@@ -{hunk.source_start},{hunk.source_length} +{hunk.target_start},{hunk.target_length} @@"
                if hunk.section_header:
                    header += f" {hunk.section_header}"
                entry = SourceHunk(patch=Path(patch).name, path=path, header=header,
                                   text=[str(line).rstrip("\n") for line in hunk])
                next_new = hunk.target_start
                for line in hunk:
                    if line.is_added:
                        entry.added.add(line.target_line_no)
                        entry.new_side.add(line.target_line_no)
                    elif line.is_removed:
                        entry.removed.add(line.source_line_no)
                        entry.new_side.add(next_new)
                    if line.target_line_no is not None:
                        next_new = line.target_line_no + 1
                hunks.append(entry)
    return hunks


def line_shifts(patches) -> LineShifts:
    """Where the patches move each line they leave unchanged, file by file (for the differ: a moved `__LINE__`
    is no change), the patches applied in order."""
    files: dict[str, list[tuple[Hunk, ...]]] = {}
    for patch in patches:
        for patched_file in read_patch(patch):
            files.setdefault(file_path(patched_file), []).append(tuple(
                Hunk(h.source_start, h.source_length, h.target_start, h.target_length,
                     {line.source_line_no: line.target_line_no for line in h if line.is_context})
                for h in patched_file))
    return LineShifts({path: tuple(per_patch) for path, per_patch in files.items()})


def lines_by_file(hunks: list[SourceHunk]) -> dict[str, set[int]]:
    """path -> the new-side lines the hunks change in it."""
    result: dict[str, set[int]] = {}
    for hunk in hunks:
        result.setdefault(hunk.path, set()).update(hunk.new_side)
    return result


def same_file(dwarf_path: str, patch_path: str) -> bool:
    """A path from DWARF (often absolute, or relative to the compile directory) names the patched file."""
    return dwarf_path == patch_path or dwarf_path.endswith("/" + patch_path) or \
        os.path.normpath(dwarf_path) == os.path.normpath(patch_path)
