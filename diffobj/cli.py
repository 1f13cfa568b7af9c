"""`patch-diff`: diff two builds of one compilation unit into a patch object."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from patch_build.common.messages import internal_error_reported, printable
from patch_build.diffobj.console import command_app, entry_point, error, guarded
from patch_build.diffobj.struct_sizes import from_settings

if TYPE_CHECKING:
    from patch_build.diffobj.diff import DiffResult

app = command_app(__doc__, add_completion=True)
PROG = "patch-diff"


def write_error_report(path: Path, name: str, message: str) -> None:
    """The report of a run that ended in an internal error: its status and message, nothing else known."""
    from patch_build.report.collect import build_report
    from patch_build.report.render import to_json

    path.write_text(to_json(build_report(name, "diff", [], status="error", message=message)))


def write_report(result: DiffResult, path: Path) -> None:
    """The shared report model (what patch-build writes, patch-report renders), with the differ's own
    summary keys (changed_functions, new_functions, included, errors, warnings) beside it."""
    from patch_build.report.collect import diff_report
    from patch_build.report.render import to_json

    data = json.loads(to_json(diff_report(result)))
    data.update(result.report())
    path.write_text(json.dumps(data, indent=2) + "\n")


@app.command()
def main(
    orig: Path = typer.Argument(..., help="the object compiled from the original source"),
    patched: Path = typer.Argument(..., help="the same unit compiled from the patched source"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the patch object"),
    report: Optional[Path] = typer.Option(None, "--report", help="write a JSON report here"),
    kernel: bool = typer.Option(False, "--kernel", help="kernel mode: special sections, fentry, klp symbols"),
    objname: Optional[str] = typer.Option(None, "--objname", help="the target's name (vmlinux, a module, a file)"),
    patches: list[Path] = typer.Option([], "--patch", metavar="PATCH",
                                       help="the patch the two builds differ by (repeatable, in order): code that "
                                            "differs only in the __LINE__ values it moved is unchanged"),
    struct_size: List[str] = typer.Option([], "--struct-size", metavar="STRUCT=BYTES", help=(
        "kernel: sizeof a special-section struct of the target kernel (alt_instr, bug_entry, exception_table_entry, "
        "jump_entry, paravirt_patch_site, orc_entry, static_call_site, pi_entry); repeatable. kpatch's environment "
        "variables (ALT_STRUCT_SIZE, JUMP_STRUCT_SIZE, ...) are read too; these options win")),
) -> None:
    """Write OUTPUT: the changed and new functions of PATCHED and what they need, as a relocatable object.

    Exit codes: 0 written, 1 change refused, 2 bad input, 3 no functional change, 4 internal error (the
    --report says so too).
    """
    from patch_build.diffobj.diff import DiffOptions, diff_objects  # not for --help: the passes, elftools

    reported = (internal_error_reported(lambda message: write_error_report(report, patched.stem, message))
                if report is not None else contextlib.nullcontext())
    with guarded(PROG), reported:
        shifts = None
        if patches:
            from patch_build.report.patches import line_shifts

            shifts = line_shifts(patches)
        sizes = from_settings(struct_size, os.environ)
        result = diff_objects(str(orig), str(patched), DiffOptions(kernel=kernel, objname=objname, line_shifts=shifts,
                                                                   struct_sizes=sizes))
        if report is not None:
            write_report(result, report)
        for w in result.warnings:
            print(f"{PROG}: warning: {printable(w)}", file=sys.stderr)
        if result.errors:
            for e in result.errors:
                error(PROG, f"{e.symbol}: {e.reason}")
            raise typer.Exit(1)
        if not result.has_changes:
            error(PROG, f"no functional change between {orig.name} and {patched.name}")
            raise typer.Exit(3)
        result.write(str(output))
        for c in result.changed_functions:
            print(printable(f"changed: {c.name}  ({'; '.join(c.reasons)})"))
        for name in result.new_functions:
            print(printable(f"new:     {name}"))

main_entry = entry_point(app, PROG)
