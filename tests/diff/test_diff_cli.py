"""The real `patch-diff` command: exit codes 0/1/2/3, its report and output agree with the library, and
malformed inputs each get a one-line error and exit 2, never a traceback.

Each CLI run pays seconds of imports, so the runs of this module start together and are collected once.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import toolchain
from support.diffcases import OBJNAME, assert_one_line_error, assert_valid_object, names_of, patch_diff_command

REPRESENTATIVE = ["changed_global_init", "noop_comment", "static_local_renumbered"]
# The cases the CLI runs; every case also goes through the library (InputError), which is cheap.
CLI_MALFORMED = ["truncated_orig", "not_elf", "wrong_machine", "shared_object", "executable", "missing_file",
                 "mismatched_units"]


def _malformed_inputs(fixtures, tmp: Path) -> dict[str, tuple[Path, Path, str, list[str]]]:
    """name -> (orig, patched, the file the error must name, words of which it must contain one)."""
    good = fixtures["string_same_length"]
    orig, patched = good.orig, good.patched
    blob = orig.read_bytes()
    cases = {}

    truncated = tmp / "truncated.o"
    truncated.write_bytes(blob[: len(blob) // 2])
    cases["truncated_orig"] = (truncated, patched, "truncated.o", ["truncat"])
    cases["truncated_patched"] = (orig, truncated, "truncated.o", ["truncat"])
    header_only = tmp / "header-only.o"
    header_only.write_bytes(blob[:40])
    cases["truncated_header"] = (orig, header_only, "header-only.o", ["truncat"])

    text = tmp / "notes.txt"
    text.write_text("this is not an object file\n")
    cases["not_elf"] = (orig, text, "notes.txt", ["not an elf"])
    empty = tmp / "empty.o"
    empty.write_bytes(b"")
    cases["empty_file"] = (empty, patched, "empty.o", ["not an elf", "empty", "truncat"])

    aarch64 = tmp / "aarch64.o"  # a real object with e_machine set to EM_AARCH64 (183)
    aarch64.write_bytes(blob[:18] + (183).to_bytes(2, "little") + blob[20:])
    cases["wrong_machine"] = (aarch64, patched, "aarch64.o", ["machine"])
    elf32 = tmp / "class32.o"  # EI_CLASS = ELFCLASS32
    elf32.write_bytes(blob[:4] + b"\x01" + blob[5:])
    cases["wrong_class"] = (orig, elf32, "class32.o", ["64-bit", "class"])

    shared = tmp / "libgreet.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shared), str(good.source("orig"))], check=True)
    cases["shared_object"] = (shared, patched, "libgreet.so", ["shared object"])
    exe_src = tmp / "exe.c"
    exe_src.write_text("int main(void) { return 0; }\n")
    exe = tmp / "a.out"
    subprocess.run(["gcc", "-no-pie", "-o", str(exe), str(exe_src)], check=True)
    cases["executable"] = (orig, exe, "a.out", ["executable"])
    pie = tmp / "pie.out"
    subprocess.run(["gcc", "-pie", "-fPIE", "-o", str(pie), str(exe_src)], check=True)
    cases["pie_executable"] = (pie, patched, "pie.out", ["executable", "shared object"])

    cases["missing_file"] = (tmp / "nonexistent.o", patched, "nonexistent.o",
                             ["no such file", "does not exist", "not found"])

    other_src = tmp / "unrelated.c"
    other_src.write_text("double area(double r) { return 3.14159 * r * r; }\nlong counter_total;\n")
    unrelated = toolchain.compile_object(other_src, tmp / "unrelated.o", ["-O2"])
    cases["mismatched_units"] = (orig, unrelated, "unrelated.o", ["same compilation unit", "same unit", "in common"])
    return cases


@pytest.fixture(scope="module")
def cli_runs(fixtures, tmp_path_factory):
    """Start every CLI run of this module at once; name -> (CompletedProcess-like, workdir)."""
    tmp = tmp_path_factory.mktemp("cli")
    jobs = {}
    for name in REPRESENTATIVE:
        fx = fixtures[name]
        work = tmp / name
        work.mkdir()
        jobs[name] = (work, [fx.orig, fx.patched, "-o", work / "out.o", "--report", work / "report.json",
                             "--objname", OBJNAME])
    malformed = _malformed_inputs(fixtures, tmp)
    for name in CLI_MALFORMED:
        orig, patched = malformed[name][:2]
        work = tmp / name
        work.mkdir()
        jobs[name] = (work, [orig, patched, "-o", work / "out.o", "--objname", OBJNAME])
    work = tmp / "usage"
    work.mkdir()
    jobs["usage_no_output"] = (work, [fixtures["string_same_length"].orig])
    procs = {name: subprocess.Popen([*patch_diff_command(), *map(str, args)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (work, args) in jobs.items()}
    runs = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        runs[name] = (subprocess.CompletedProcess(p.args, p.returncode, out, err), jobs[name][0])
    return runs, malformed


def test_cli_writes_the_same_report_and_object_as_the_library(fixtures, cli_runs):
    runs, _ = cli_runs
    fx = fixtures["static_local_renumbered"]
    proc, work = runs["static_local_renumbered"]
    assert proc.returncode == 0, proc.stderr
    report = json.loads((work / "report.json").read_text())
    api = fx.diff.report
    for key in ("changed_functions", "new_functions", "included", "errors", "warnings"):
        assert report[key] == api[key], key
    assert names_of(report["changed_functions"]) == {"next_b"}
    assert_valid_object(work / "out.o", work)
    assert (work / "out.o").read_bytes() == fx.diff.out.read_bytes(), "output is not deterministic"
    assert "next_b" in proc.stdout


def test_cli_refusal_is_exit_1_one_line_naming_the_symbol(cli_runs):
    proc, work = cli_runs[0]["changed_global_init"]
    assert proc.returncode == 1
    err = assert_one_line_error(proc)
    assert "limit" in err
    assert not (work / "out.o").exists()
    report = json.loads((work / "report.json").read_text())
    assert [e["symbol"] for e in report["errors"]] == ["limit"]


def test_cli_no_change_is_exit_3(cli_runs):
    proc, work = cli_runs[0]["noop_comment"]
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (work / "out.o").exists()
    report = json.loads((work / "report.json").read_text())
    assert report["changed_functions"] == [] and report["new_functions"] == []


MALFORMED = ["truncated_orig", "truncated_patched", "truncated_header", "not_elf", "empty_file", "wrong_machine",
             "wrong_class", "shared_object", "executable", "pie_executable", "missing_file", "mismatched_units"]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_input_raises_input_error(cli_runs, case):
    """The library raises InputError (exit code 2) with a one-line message naming the file and the fault."""
    from patch_build.diffobj.diff import DiffOptions, diff_objects
    from patch_build.common.errors import InputError

    orig, patched, must_name, words = cli_runs[1][case]
    with pytest.raises(InputError) as info:
        diff_objects(str(orig), str(patched), DiffOptions(objname=OBJNAME))
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert len(msg.splitlines()) == 1 and msg.strip(), msg
    assert must_name in msg, f"the error does not name {must_name}: {msg}"
    assert any(w in msg.lower() for w in words), f"the error does not say what is wrong ({words}): {msg}"


@pytest.mark.parametrize("case", CLI_MALFORMED)
def test_malformed_input_is_exit_2_with_one_line(cli_runs, case):
    runs, malformed = cli_runs
    proc, work = runs[case]
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    err = assert_one_line_error(proc)
    must_name, words = malformed[case][2:]
    assert must_name in err, f"the error does not name {must_name}: {err}"
    assert any(w in err.lower() for w in words), f"the error does not say what is wrong ({words}): {err}"
    assert not (work / "out.o").exists()


def test_usage_error_is_exit_2(cli_runs):
    proc, _ = cli_runs[0]["usage_no_output"]
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
