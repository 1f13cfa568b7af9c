"""Diffing one changed compilation unit against one target: the differ, then the deployed-binary check.

Runs in worker processes (`-j`), so what it returns is plain, picklable data rather than the differ's model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from diffobj.diff import DiffOptions, DiffResult, diff_objects
from diffobj.read import read_object
from kbuild.deployed import DeployedBinary, UnitSymbols, load_binary, mismatches


@dataclass
class UnitJob:
    source: str  # relative to the tree, for messages
    orig: Path  # snapshot of the original build's object
    patched: Path
    binary: Path  # deployed target binary
    output: Path  # where the differ's output goes


@dataclass
class UnitDiff:
    source: str
    objname: str  # the target's basename
    report: dict  # DiffResult.report()
    errors: list[tuple[str, str]] = field(default_factory=list)  # (symbol, reason): unsupported changes
    warnings: list[str] = field(default_factory=list)
    has_changes: bool = False
    changed: list[str] = field(default_factory=list)  # original names of the replaced functions
    new: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # replaced functions the deployed binary runs otherwise
    output: Path | None = None  # written when it has changes, no errors and no mismatch


@lru_cache(maxsize=8)
def _binary(path: Path) -> DeployedBinary:
    return load_binary(path)


def diff_unit(job: UnitJob) -> UnitDiff:
    binary = _binary(job.binary)
    unit = UnitSymbols(binary, read_object(os.fspath(job.orig)))
    result = diff_objects(os.fspath(job.orig), os.fspath(job.patched),
                          DiffOptions(kernel=False, objname=binary.name, sympos=unit, deployed_size=unit.size))
    return checked_diff(job.source, binary, result, unit, job.output)


def checked_diff(source: str, binary: DeployedBinary, result: DiffResult, where, output: Path) -> UnitDiff:
    """The differ's `result` as a UnitDiff, its replaced functions checked against the deployed binary (`where`
    finds the original's symbols in it); the patch object is written to `output` when it may be used."""
    out = UnitDiff(source=source, objname=binary.name, report=result.report(),
                   errors=[(e.symbol, e.reason) for e in result.errors], warnings=list(result.warnings),
                   has_changes=result.has_changes, changed=[c.old_name for c in result.changed_functions],
                   new=list(result.new_functions))
    if out.errors or not out.has_changes:
        return out
    out.mismatched = mismatches(result.orig, out.changed, where)
    if not out.mismatched:
        result.write(os.fspath(output))
        out.output = output
    return out
