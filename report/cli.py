"""`patch-report`: re-render a saved NAME.report.json as Markdown, HTML or (normalised) JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from diffobj.console import entry_point, error

from report.model import Report
from report.render import FORMATS, render

app = typer.Typer(add_completion=False, help="Re-render a patch-build report (NAME.report.json).")
PROG = "patch-report"


def _fail(message: str, code: int = 2) -> None:
    error(PROG, message)
    raise typer.Exit(code)


def load_report(path: Path) -> Report:
    """Read a saved report; raises ValueError with a one-line reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    try:
        return Report.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


@app.command()
def main(
    report_json: Path = typer.Argument(..., metavar="NAME.report.json", help="A report written by patch-build."),
    fmt: str = typer.Option("md", "--format", "-f", help="md | html | json"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    try:
        text = render(load_report(report_json), fmt)
    except ValueError as e:
        _fail(str(e))
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        _fail(f"{output}: {e.strerror}")



main_entry = entry_point(app, PROG)
