"""`patch-report`: re-render a saved NAME.report.json as Markdown, HTML or (normalised) JSON."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from patch_build.common.errors import InputError
from patch_build.diffobj.console import command_app, entry_point, guarded
from patch_build.report.model import read_report
from patch_build.report.render import FORMATS, render

app = command_app("Re-render a patch-build report (NAME.report.json).", add_completion=True)
PROG = "patch-report"


@app.command()
def main(
    report_json: Path = typer.Argument(..., metavar="NAME.report.json", help="A report written by patch-build."),
    fmt: str = typer.Option("md", "--format", "-f", help="md | html | json"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    with guarded(PROG):
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
        text = render(read_report(report_json), fmt)
        if output is None:
            typer.echo(text, nl=False)
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as e:
            raise InputError(f"{output}: {e.strerror}") from None


main_entry = entry_point(app, PROG)
