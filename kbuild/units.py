"""Diffing one changed compilation unit against one target: the differ, then the deployed-binary check.

Runs in worker processes (`-j`), so what it returns is plain, picklable data rather than the differ's model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from patch_build.diffobj.diff import DiffOptions, DiffResult, diff_objects
from patch_build.diffobj.line_numbers import LineShifts
from patch_build.diffobj.read import read_object
from patch_build.kbuild.deployed import DeployedBinary, UnitSymbols, load_binary, mismatches
from patch_build.report.explain import UnitSources, unexplained_changes


@dataclass
class UnitJob:
    source: str  # relative to the tree, for messages
    object_name: str  # the unit's object, relative to the tree (reports name it so, not by its scratch copy)
    orig: Path  # snapshot of the original build's object
    patched: Path
    binary: Path  # deployed target binary
    output: Path  # where the differ's output goes
    only_explained: UnitSources | None = None  # --only-explained: the patches' hunks, to leave unexplained changes out
    line_shifts: LineShifts | None = None  # the lines the patches moved: moved __LINE__ values are no change


@dataclass
class UnitDiff:
    source: str
    object_name: str
    objname: str  # the target's basename
    report: dict  # DiffResult.report()
    errors: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason): unsupported changes
    warnings: list[str] = field(default_factory=list)
    has_changes: bool = False
    changed: list[str] = field(default_factory=list)  # original names of the replaced functions
    new: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # replaced functions the deployed binary runs otherwise
    output: Path | None = None  # written when it has changes, no errors and no mismatch
    left_out: list[dict] = field(default_factory=list)  # --only-explained: the differ's entries of those left out
    causes: dict[str, str] = field(default_factory=dict)  # left-out function -> its likely cause


@lru_cache(maxsize=8)
def _binary(path: Path) -> DeployedBinary:
    return load_binary(path)


def diff_unit(job: UnitJob) -> UnitDiff:
    binary = _binary(job.binary)
    unit = UnitSymbols(binary, read_object(os.fspath(job.orig)))

    def diff(leave_out: frozenset[str]):
        options = DiffOptions(kernel=False, objname=binary.name, sympos=unit, deployed_size=unit.size,
                              leave_out=leave_out, line_shifts=job.line_shifts)
        return diff_objects(os.fspath(job.orig), os.fspath(job.patched), options), unit

    result, where, left_out, causes = diff_explained(diff, job.only_explained)
    return checked_diff(job.source, job.object_name, binary, result, where, job.output, left_out, causes)


def diff_explained(diff, only_explained: UnitSources | None):
    """`diff(leave_out)` -> (DiffResult, where), and again with the changed functions no hunk explains left out
    when `only_explained` (--only-explained): (result, where, the differ's entries left out, their causes)."""
    result, where = diff(frozenset())
    left_out, causes = unexplained_changes(result, only_explained) if only_explained else ([], {})
    if left_out:
        result, where = diff(frozenset(causes))
    return result, where, left_out, causes


def checked_diff(source: str, object_name: str, binary: DeployedBinary, result: DiffResult, where, output: Path,
                 left_out: list[dict] | None = None, causes: dict[str, str] | None = None) -> UnitDiff:
    """The differ's `result` as a UnitDiff, its replaced functions checked against the deployed binary (`where`
    finds the original's symbols in it); the patch object is written to `output` when it may be used.
    `left_out`/`causes`: what --only-explained kept out of it."""
    out = UnitDiff(source=source, object_name=object_name, objname=binary.name, report=result.report(),
                   errors=[(e.symbol, e.reason) for e in result.errors], warnings=list(result.warnings),
                   has_changes=result.has_changes, changed=[c.old_name for c in result.changed_functions],
                   new=list(result.new_functions), left_out=left_out or [], causes=causes or {})
    if out.errors or not out.has_changes:
        return out
    out.mismatched = mismatches(result.orig, out.changed, where)
    if not out.mismatched:
        result.write(os.fspath(output))
        out.output = output
    return out
