"""The HTML report in real headless Chromium (Debian's package): it loads with no console errors, no
blocked external loads (the page's CSP allows nothing outside itself), the function table and a diff are
visible, its one script works, and a screenshot is written to the test's tmp dir."""
from __future__ import annotations

import json

import pytest

from patch_build.report.build import write_reports

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


LAYOUT = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width}; };
  const beside = document.querySelector("details.fn-diff .beside");
  return JSON.stringify({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    bars: [...document.querySelectorAll("#summary table.glance tr")].map(tr => ({
      link: tr.querySelector("td.name a").getAttribute("href"),
      bar: box(tr.querySelector(".bar")).width, track: box(tr.querySelector(".track")).width,
      rows: Number(tr.querySelector("td.rows").innerText)})),
    targets: [...document.querySelectorAll("#summary a")].every(a => document.getElementById(a.getAttribute("href").slice(1))),
    src: box(beside.querySelector(".src")), asm: box(beside.querySelector(".asm")),
  });
})()"""


def _expected_rows(report) -> dict[str, int]:
    """#diff-OBJ-SYMBOL -> disassembly rows that differ, counted from the report itself."""
    return {f"#diff-{oi}-{d.name}": sum(row.tag != "equal" for row in d.rows)
            for oi, o in enumerate(report.objects, 1) for d in o.diffs}


@pytest.mark.parametrize("width", [1280, 390])
def test_summary_and_layout_at_desktop_and_narrow_width(html, fix_report, tmp_path, width):
    expected = _expected_rows(fix_report)
    with Browser(str(tmp_path / "profile")) as browser:
        browser.open(html.as_uri())
        browser.set_width(width)
        page = json.loads(browser.evaluate(LAYOUT))
        browser.capture(str(tmp_path / f"report-{width}.png"))
        assert browser.problems() == []
    assert page["overflow"] <= 0, f"the page is {page['overflow']} px wider than a {width} px screen"
    # one bar per changed or new function, in the summary at the top, each linking to its section
    assert {b["link"]: b["rows"] for b in page["bars"]} == expected
    assert page["targets"]
    largest = max(expected.values())
    full = next(b for b in page["bars"] if b["rows"] == largest)
    assert full["bar"] == pytest.approx(full["track"], abs=0.5)
    for b in page["bars"]:  # widths proportional to the counts (bars are at least 2 px)
        assert b["bar"] == pytest.approx(max(2, full["bar"] * b["rows"] / largest), abs=1), b
    src, asm = page["src"], page["asm"]
    if width >= 1000:  # the hunk beside its disassembly
        assert src["right"] <= asm["left"] and abs(src["top"] - asm["top"]) < 2
    else:  # a phone stacks them, each the full width
        assert asm["top"] >= src["bottom"] and asm["width"] > 0.9 * src["width"]
    png = (tmp_path / f"report-{width}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


PRINTED = """(() => {
  const shown = el => el.checkVisibility() && el.getBoundingClientRect().height > 0;
  const luminance = color => {
    const [r, g, b, a = 1] = color.match(/[\\d.]+/g).map(Number);
    return a === 0 ? 1 : (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
  };
  const dark = [...document.querySelectorAll("body *")].filter(shown)
    .filter(el => luminance(getComputedStyle(el).backgroundColor) < 0.6)
    .map(el => el.tagName + "." + el.className);
  return JSON.stringify({
    details: [...document.querySelectorAll("details.fn-diff")].map(d => ({
      open: d.open, hunks: [...d.querySelectorAll("pre.hunk")].every(shown) && d.querySelector("pre.hunk") !== null,
      asm: shown(d.querySelector("table.diff tbody tr")),
      wrap: getComputedStyle(d.querySelector("table.diff td.new")).whiteSpace})),
    included: shown(document.querySelector("table.included td")),
    toggle: shown(document.getElementById("changes-only")),
    dark: dark,
    keepWithNext: getComputedStyle(document.querySelector("h2")).breakAfter,
    hunkWhole: getComputedStyle(document.querySelector("pre.hunk")).breakInside,
  });
})()"""


def test_print_stylesheet_expands_everything(html, tmp_path):
    """Release sign-off is often a PDF: under print media, collapsed sections (as a reader left them) print
    expanded, code wraps instead of being cut, nothing prints on a dark background, headings stay with what
    follows; the on-screen toggle is not printed."""
    with Browser(str(tmp_path / "profile")) as browser:
        browser.open(html.as_uri())
        closed = browser.evaluate('[...document.querySelectorAll("details")].map(d => { d.open = false; }).length')
        assert closed >= 2
        screen = json.loads(browser.evaluate(PRINTED))
        assert not any(d["hunks"] or d["asm"] for d in screen["details"])  # collapsed on screen: the check can fail
        assert screen["dark"]  # the status badge is white on green on screen
        browser.emulate_media("print")
        printed = json.loads(browser.evaluate(PRINTED))
        browser.capture(str(tmp_path / "report-print.png"))
        browser.print_pdf(str(tmp_path / "report.pdf"))
        assert browser.problems() == []
    assert printed["details"] and all(d["hunks"] and d["asm"] and not d["open"] for d in printed["details"])
    assert printed["included"] and not printed["toggle"]
    assert printed["dark"] == []
    assert {d["wrap"] for d in printed["details"]} == {"pre-wrap"}
    assert printed["keepWithNext"] == "avoid" and printed["hunkWhole"] == "avoid"
    pdf = (tmp_path / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + pdf.count(b"/Type /Page>") > 1
