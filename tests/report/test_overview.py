"""The patch at a glance (issue 12): the summary at the top of the reports, per object its changed and new functions
with the disassembly rows that differ, as bars to the scale of the largest; the Markdown report shows it as text."""
from __future__ import annotations

import dataclasses
import re

from patch_build.report.overview import overview
from patch_build.report.render import TEXT_BAR, to_html, to_markdown


def _rows(report) -> dict[str, int]:
    return {d.name: sum(row.tag != "equal" for row in d.rows) for d in report.objects[0].diffs}


def test_overview_counts_and_shares(fix_report):
    (glance,) = overview(fix_report)
    counts = _rows(fix_report)
    assert glance.unit == "server.c" and glance.objname == "server"
    assert [(f.symbol, f.status) for f in glance.functions] == [
        (f.name, f.status) for f in fix_report.objects[0].functions if f.status != "included"]
    assert glance.count("changed") == 7 and glance.count("new") == 1
    largest = max(counts.values())
    assert counts["audit"] == largest  # the new function: all its instructions are new
    for f in glance.functions:
        assert f.changed_rows == counts[f.symbol] and f.share == counts[f.symbol] / largest


def test_markdown_summary_as_text(fix_report):
    md = to_markdown(fix_report)
    summary = md.split("\n## At a glance\n", 1)[1].split("\n## ", 1)[0]
    assert "### Unit `server.c` of `server`: 7 changed, 1 new" in summary
    counts = _rows(fix_report)
    largest = max(counts.values())
    found = {}
    for line in summary.splitlines():
        m = re.fullmatch(r"\| \[`(\w+)`\]\(#fn-1-(\w+)\) \| (CHANGED|NEW) \| `(█*)(·*)` (\d+) \|", line)
        if m:
            assert m.group(1) == m.group(2) and len(m.group(4) + m.group(5)) == TEXT_BAR
            found[m.group(1)] = (len(m.group(4)), int(m.group(6)))
    assert {name: rows for name, (_, rows) in found.items()} == counts
    for name, (blocks, rows) in found.items():
        assert blocks == max(1, round(TEXT_BAR * rows / largest)), name
    assert md.index("## At a glance") < md.index("## Object ")  # at the top


def test_summary_without_disassembly_or_changes(fix_report):
    """A report without disassembly lists the functions without bars; one without changed functions has no
    summary at all."""
    bare = dataclasses.replace(fix_report, objects=[dataclasses.replace(fix_report.objects[0], diffs=[])])
    (glance,) = overview(bare)
    assert all(f.changed_rows is None and f.share == 0 for f in glance.functions)
    assert "| [`greet`](#fn-1-greet) | CHANGED | - |" in to_markdown(bare)
    assert 'class="bar' not in to_html(bare) and 'id="glance-1"' in to_html(bare)
    empty = dataclasses.replace(fix_report, objects=[], hunks=[])
    assert overview(empty) == [] and "At a glance" not in to_markdown(empty) + to_html(empty)
