"""Render a `Report` as JSON, Markdown or a self-contained HTML page (jinja2 templates in templates/report).

Renderings are pure functions of the report: the same report gives the same bytes, so artifacts built
from the same inputs compare equal.
"""
from __future__ import annotations

import json
from functools import lru_cache

from patch_build.common.messages import printable
from patch_build.report.model import Report
from patch_build.report.overview import overview

FORMATS = ("json", "md", "html")
SUFFIXES = {"json": ".report.json", "md": ".report.md", "html": ".report.html"}
STATUS_TEXT = {"built": "patch built", "refused": "refused", "failed": "failed", "no-change": "no functional change",
               "error": "internal error"}


def to_json(report: Report) -> str:
    text = json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n"
    if text.isascii() and "\x7f" not in text:
        return text
    # json.dumps escapes only C0 controls: escape the others too (DEL, C1, bidi overrides...), so that
    # `patch-report --format json` is as safe on a terminal as the other formats. Outside strings there
    # are only printable characters and newlines.
    return "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)


def _md_cell(value) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _hexoff(value) -> str:
    return "" if value is None else f"{value:x}"


def _unified(rows):
    """Side-by-side rows as unified-diff lines (prefix, offset, text): each run of changed rows shows its
    original lines first, then its patched lines, as `diff -u` does."""
    lines, old, new = [], [], []
    for row in [*rows, None]:
        if row is None or row.tag == "equal":
            lines += old + new
            old, new = [], []
            if row is not None:
                lines.append((" ", row.new_offset, row.new_text))
            continue
        if row.old_text is not None:
            old.append(("-", row.old_offset, row.old_text))
        if row.new_text is not None:
            new.append(("+", row.new_offset, row.new_text))
    return lines


def _percent(share: float) -> str:
    return f"{share * 100:.2f}%"


TEXT_BAR = 20  # characters of a full bar in the Markdown summary


def _text_bar(share: float) -> str:
    """A bar of block characters, TEXT_BAR long for the largest share; any change shows at least one."""
    full = max(round(share * TEXT_BAR), 1 if share > 0 else 0)
    return "█" * full + "·" * (TEXT_BAR - full)


def _printable(value):
    """Every value a template prints, with control characters (from names in untrusted objects) escaped but
    for the tabs and line ends of source text; HTML-safe markup stays markup."""
    return type(value)(printable(value, keep="\t\n")) if isinstance(value, str) else value


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("patch_build.templates", "report"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_printable,
    )
    env.filters["md"] = _md_cell
    env.filters["hexoff"] = _hexoff
    env.filters["unified"] = _unified
    env.filters["percent"] = _percent
    env.filters["text_bar"] = _text_bar
    return env


def _render(template: str, report: Report) -> str:
    return _environment().get_template(template).render(
        r=report, counts=report.counts(), overview=overview(report),
        status_text=STATUS_TEXT.get(report.status, report.status))


def to_markdown(report: Report) -> str:
    return _render("report.md.j2", report)


def to_html(report: Report) -> str:
    return _render("report.html.j2", report)


def render(report: Report, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
    return {"json": to_json, "md": to_markdown, "html": to_html}[fmt](report)
