"""The fuzz harness itself must notice what it is there to notice: hangs, crashes, tracebacks, extra
error lines, raw control characters; and its mutations must be reproducible."""
from __future__ import annotations

import os

import pytest

from support.fuzzing import Runner, check_outcome, json_mutations, mutations

PROBE = '''
import os, signal, sys, time

def main_entry():
    what = sys.argv[1]
    if what == "sleep":
        time.sleep(60)
    elif what == "stuck":  # as in C code, where SIGALRM cannot interrupt: the parent's watchdog must act
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(60)
    elif what == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif what == "raise":
        raise ValueError("boom")
    elif what == "two-errors":
        print("probe: error: one", file=sys.stderr)
        print("probe: error: two", file=sys.stderr)
        sys.exit(2)
    elif what == "escape":
        print("name \\x1b[31m")
    elif what == "child":
        os.system("echo from a child; echo probe: error: bad input >&2")
        sys.exit(2)
    else:
        sys.exit(int(what))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    (d / "fuzzprobe.py").write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=f"{d}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with Runner("fuzzprobe", "probe", timeout=2, env=env) as run:
        yield run


@pytest.mark.parametrize("what, problem", [
    ("sleep", "hang"), ("stuck", "hang"), ("segfault", "killed by signal 11"), ("raise", "traceback"), ("two-errors", "2 error lines"),
    ("escape", "raw control character"), ("4", "exit 4"), ("1", "without a `probe: error:` line"),
])
def test_each_failure_is_reported_and_the_worker_carries_on(probe, what, problem):
    problems = check_outcome(probe([what]), "probe")
    assert any(problem in p for p in problems), problems
    assert probe(["3"]).code == 3  # the next run still works


def test_output_of_child_processes_is_captured(probe):
    outcome = probe(["child"])
    assert outcome.code == 2 and not check_outcome(outcome, "probe")
    assert outcome.stdout == b"from a child\n" and outcome.stderr == b"probe: error: bad input\n"


def test_mutations_are_reproducible_and_varied():
    blob = bytes(range(256)) * 8
    first = list(mutations(blob, seed=5, count=50))
    assert first == list(mutations(blob, seed=5, count=50))
    assert first != list(mutations(blob, seed=6, count=50))
    assert len({m for _, m in first}) == 50 and all(m != blob for _, m in first)
    doc = {"a": [1, {"b": "c"}], "d": None}
    assert list(json_mutations(doc, 1, 20)) == list(json_mutations(doc, 1, 20))
