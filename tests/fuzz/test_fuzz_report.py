"""patch-report on mutated reports (structure and bytes), and the bounded reading of every input file."""
from __future__ import annotations

import json
import os

import pytest

from support.fuzzcampaigns import REPORT_FORMATS, report_campaign, seed_report
from support.fuzzing import Runner, check_outcome, describe

SEED = 20261130
CONTROL = "\x1b\x07\x9b\u202e\x7f"  # escape (ANSI colours), bell, C1 CSI, right-to-left override, DEL


@pytest.fixture(scope="module")
def report_seed(tmp_path_factory) -> dict:
    return seed_report(tmp_path_factory.mktemp("report-seed"))


@pytest.mark.slow
def test_patch_report_survives_mutated_reports(report_seed, tmp_path):
    counts, failures = report_campaign(tmp_path, report_seed, SEED, structural=220, byte_level=80)
    assert not failures, f"{len(failures)} bad outcomes, first ones:\n" + "\n".join(
        describe(*f) for f in failures[:5])
    assert counts["exit 2"] > 50 and counts["exit 0"] > 30, counts


@pytest.fixture(scope="module")
def report_cli():
    with Runner("patch_build.report.cli", "patch-report") as run:
        yield run


def one_error(outcome, prog="patch-report") -> str:
    assert not check_outcome(outcome, prog), describe("", outcome, check_outcome(outcome, prog))
    assert outcome.code == 2
    lines = outcome.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("document, message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"schema": 1, "name": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ('{"schema": 1, "name": ' + "9" * 5000 + "}", "digits"),
    ('{"schema": 1, "name": "x", "kind": "diff", "status": "built", "tool": {"name": "t", "version": "1"}, '
     '"objects": "not a list"}', "report.objects: expected a list"),
], ids=["nested-document", "nested-value", "long-number", "wrong-type"])
def test_malformed_reports_are_one_line_errors(report_cli, tmp_path, document, message):
    path = tmp_path / "bad.report.json"
    path.write_text(document)
    line = one_error(report_cli([str(path)]))
    assert str(path) in line and message in line


def test_special_and_huge_files_are_refused_unread(report_cli, tmp_path):
    fifo = tmp_path / "fifo.report.json"
    os.mkfifo(fifo)
    assert "is a FIFO" in one_error(report_cli([str(fifo)], timeout=10))
    assert "is a character device" in one_error(report_cli(["/dev/zero"], timeout=10))
    assert "is a directory" in one_error(report_cli([str(tmp_path)]))
    huge = tmp_path / "huge.report.json"
    with open(huge, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: refused by its size before a byte is read
    assert "report too large (68,157,440 bytes" in one_error(report_cli([str(huge)]))


@pytest.mark.parametrize("command, module, argv", [
    ("patch-diff", "patch_build.diffobj.cli", ["{input}", "{input}", "-o", "{out}"]),
    ("patch-ctl", "patch_build.loader.cli", ["info", "{input}"]),
])
def test_other_commands_refuse_special_files(tmp_path, command, module, argv):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with Runner(module, command) as run:
        for special, kind in ((str(fifo), "is a FIFO"), ("/dev/zero", "is a character device")):
            outcome = run([a.format(input=special, out=tmp_path / "out") for a in argv], timeout=10)
            assert kind in one_error(outcome, command)


def test_names_with_control_characters_are_escaped_in_every_format(report_cli, report_seed, tmp_path):
    doc = json.loads(json.dumps(report_seed))
    doc["objects"][0]["functions"][0]["name"] = "evil[31m".join(CONTROL)
    doc["message"] = "line one\nline two" + CONTROL
    path = tmp_path / "control.report.json"
    path.write_text(json.dumps(doc))
    for fmt in REPORT_FORMATS:
        outcome = report_cli([str(path), "--format", fmt])
        assert outcome.code == 0 and not check_outcome(outcome, "patch-report"), outcome.stderr
        text = outcome.stdout.decode()
        assert "evil[31m" in text and not any(c in text for c in CONTROL)
    # The JSON rendering escapes them as JSON does, so it still reads back to the same names.
    again = json.loads(report_cli([str(path), "--format", "json"]).stdout)
    assert again["objects"][0]["functions"][0]["name"] == "evil[31m".join(CONTROL)
