"""The HTML report in real headless Chromium (Debian's package): it loads with no console errors, no
blocked external loads (the page's CSP allows nothing outside itself), the function table and a diff are
visible, its one script works, and a screenshot is written to the test's tmp dir."""
from __future__ import annotations

import json

import pytest

from report.build import write_reports

from browser import Browser, screenshot

VISIBLE = """(() => {
  const shown = el => el !== null && el.checkVisibility() && el.getBoundingClientRect().height > 0;
  const table = document.querySelector("table.functions");
  const greet = document.getElementById("diff-1-greet");
  const changed = greet && greet.querySelector("tr.replace");
  return JSON.stringify({
    table: shown(table),
    rows: table ? [...table.querySelectorAll("tbody tr")].map(tr => [tr.cells[0].innerText, tr.cells[1].innerText]) : [],
    diff: shown(greet) && shown(changed),
    old: changed ? changed.querySelector("td.old").innerText : null,
    new: changed ? changed.querySelector("td.new").innerText : null,
    equalShown: [...document.querySelectorAll("table.diff tr.equal")].filter(shown).length,
  });
})()"""


@pytest.fixture(scope="module")
def html(fix_report, tmp_path_factory):
    return write_reports(fix_report, tmp_path_factory.mktemp("html"), "fix", formats=("html",))[0]


def test_html_report_in_chromium(html, tmp_path):
    with Browser(str(tmp_path / "profile")) as browser:
        browser.open(html.as_uri())
        page = json.loads(browser.evaluate(VISIBLE))
        assert page["table"] and page["diff"]
        assert ["greet", "CHANGED"] in page["rows"] and ["audit", "NEW"] in page["rows"]
        assert '"hello, %s\\n"' in page["old"] and '"hello there, %s\\n"' in page["new"]
        assert page["equalShown"] > 0
        browser.evaluate('document.getElementById("changes-only").click()')
        after = json.loads(browser.evaluate(VISIBLE))
        assert after["equalShown"] == 0 and after["diff"]  # the toggle hides unchanged lines only
        assert browser.problems() == []
    png = tmp_path / "report.png"
    screenshot(html.as_uri(), str(png), str(tmp_path / "profile-shot"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_browser_check_sees_blocked_external_loads(html, tmp_path):
    """The check above would catch a page that reached outside itself: the same browser reports it here."""
    with Browser(str(tmp_path / "profile")) as browser:
        browser.open(html.as_uri())
        browser.evaluate('const s = document.createElement("img"); s.src = "https://example.com/x.png";'
                         'document.body.appendChild(s); 1')
        browser.evaluate("new Promise(r => setTimeout(r, 200))")
        assert any("Content Security Policy" in p for p in browser.problems())
