"""`patch-ctl var` on live processes (fixtures/vars): a C program (PIE, worker threads reading the globals
all the time, a shared library of its own), the same without DWARF, and a C++ one (non-PIE). Each set is
seen in what the program prints, listed by `patch-ctl list`, and undone; each refusal is one line with
its exit code, and leaves the program as it was, running and untraced."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from livetarget import REPO, Run, assert_one_line_error, patch_ctl, patch_ctl_argv, patch_ctl_env

pytestmark = pytest.mark.slow  # live processes built with every variable type and gflags: about a minute

VARS = REPO / "fixtures" / "vars"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("vars") / "vars"
    shutil.copytree(VARS, tree)
    subprocess.run(["make", "-s"], cwd=tree, check=True, capture_output=True)
    return tree


class Target:
    """A fixture program: each line on its stdin gets one line of `name=value` pairs."""

    def __init__(self, binary: Path, threads: int = 4):
        self.proc = subprocess.Popen([str(binary), str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout.readline() == "ready\n"
        self.pid = self.proc.pid
        self.threads = threads

    def values(self) -> dict[str, str]:
        self.proc.stdin.write("p\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.endswith("\n"), "the target died"
        return dict(pair.split("=", 1) for pair in line.split())

    def var_mappings(self) -> list[str]:
        with open(f"/proc/{self.pid}/maps") as f:
            return [l for l in f if "kpatch-var" in l]

    def assert_running_untraced(self) -> None:
        with open(f"/proc/{self.pid}/status") as f:
            status = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
        assert status["State"][0] in "SR" and status["TracerPid"] == "0", status
        assert int(status["Threads"]) == self.threads + 1  # main and the workers: none lost

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def c_target(built):
    t = Target(built / "vars")
    yield t
    t.stop()


@pytest.fixture
def cxx_target(built):
    t = Target(built / "vars-cxx")
    yield t
    t.stop()


@pytest.fixture
def nodebug_target(built):
    t = Target(built / "vars-nodebug")
    yield t
    t.stop()


def ok(*args) -> Run:
    run = patch_ctl(*args)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    return run


def values_but_counters(t: Target) -> dict[str, str]:
    """What the program prints, less the counters it advances on each line."""
    return {k: v for k, v in t.values().items() if k not in ("a", "b", "id", "lib")}


# (variable, new value, key printed, what is printed after the set)
C_SETS = [("g_i8", "-128", "i8", "-128"), ("g_u8", "255", "u8", "255"), ("g_i16", "-32768", "i16", "-32768"),
          ("g_u16", "0xffff", "u16", "65535"), ("g_int", "-7", "int", "-7"), ("g_u32", "4294967295", "u32", "4294967295"),
          ("g_i64", "-9223372036854775808", "i64", "-9223372036854775808"),
          ("g_u64", "18446744073709551615", "u64", "18446744073709551615"), ("g_flag", "false", "flag", "0"),
          ("g_color", "BLUE", "color", "7"), ("g_float", "-2.25", "float", "-2.25"), ("g_ratio", "1e-3", "ratio", "0.001"),
          ("g_name", "fifteen_chars!!", "name", "fifteen_chars!!"), ("g_greeting", "bonjour", "greeting", "bonjour"),
          ("lib_level", "11", "lib_level", "11"), ("g_step", "5", "step", "5")]


def test_set_every_type_then_undo(c_target):
    t = c_target
    before = values_but_counters(t)
    for name, value, key, shown in C_SETS:
        run = ok("var", "set", "-p", t.pid, name, value)
        assert run.stdout.startswith(f"set {name} in process {t.pid}: "), run.stdout
        assert t.values()[key] == shown, (name, t.values())
    listed = json.loads(ok("list", "-p", t.pid, "--json").stdout)["variables"]
    assert [(v["name"], v["state"]) for v in listed] == [(name, "set") for name, *_ in C_SETS]
    text = ok("list", "-p", t.pid).stdout
    assert "variable g_color (enum color) in vars at " in text and ": GREEN -> BLUE [set]" in text
    assert ok("var", "get", "-p", t.pid, "g_u16").stdout == "65535\n"
    assert ok("var", "get", "-p", t.pid, "g_color").stdout == "BLUE\n"
    assert ok("var", "get", "-p", t.pid, "g_greeting").stdout == "bonjour\n"
    assert len(t.var_mappings()) == 1
    for name, *_ in reversed(C_SETS):
        ok("var", "undo", "-p", t.pid, name)
    assert values_but_counters(t) == before
    assert json.loads(ok("list", "-p", t.pid, "--json").stdout)["variables"] == []
    assert t.var_mappings() == []  # nothing left to undo: the record is unmapped
    t.assert_running_untraced()


def test_sets_stack_and_undo_newest_first(c_target):
    t = c_target
    ok("var", "set", "-p", t.pid, "g_int", "1")
    ok("var", "set", "-p", t.pid, "g_int", "2")
    assert t.values()["int"] == "2"
    ok("var", "undo", "-p", t.pid, "g_int")
    assert t.values()["int"] == "1"
    ok("var", "undo", "-p", t.pid, "g_int")
    assert t.values()["int"] == "42"


def test_statics_by_file_and_function(c_target):
    t = c_target
    ok("var", "set", "-p", t.pid, "part_b.c:counter", "500")
    ok("var", "set", "-p", t.pid, "next_id::calls", "1000")
    ok("var", "set", "-p", t.pid, "varsutil.c:counter", "2000")
    got = t.values()  # each counter is advanced once per line, after the set
    assert (got["a"], got["b"], got["id"], got["lib"]) == ("10", "500", "1001", "2001")
    assert ok("var", "get", "-p", t.pid, "part_a.c:counter").stdout == "11\n"
    assert ok("var", "get", "-p", t.pid, "vars.c:calls").stdout == "1001\n"
    listing = ok("var", "list", "-p", t.pid, "*counter").stdout.splitlines()
    assert [l.split(" ")[0] for l in listing] == ["part_a.c:counter", "part_b.c:counter", "varsutil.c:counter"]
    assert listing[1].startswith("part_b.c:counter (int) = 501  [vars 0x")


def test_refusals_leave_the_target_as_it_was(c_target):
    t = c_target
    before = values_but_counters(t)
    cases = [(("var", "get", "-p", t.pid, "nosuch"), 2, "nosuch: no such variable in process"),
             (("var", "set", "-p", t.pid, "counter", "1"), 2,
              "counter: ambiguous, 3 variables have that name: part_a.c:counter, part_b.c:counter, varsutil.c:counter"),
             (("var", "set", "-p", t.pid, "g_limit", "5"), 1, "g_limit: is const int: read-only data is never written"),
             (("var", "set", "-p", t.pid, "g_u8", "256"), 1, "g_u8: 256 does not fit uint8_t (0..255)"),
             (("var", "set", "-p", t.pid, "g_i8", "-129"), 1, "g_i8: -129 does not fit int8_t (-128..127)"),
             (("var", "set", "-p", t.pid, "g_int", "forty"), 2, "g_int: 'forty' is not an integer"),
             (("var", "set", "-p", t.pid, "g_flag", "maybe"), 2, "g_flag: 'maybe' is not a bool"),
             (("var", "set", "-p", t.pid, "g_color", "PURPLE"), 2,
              "g_color: 'PURPLE' is not an enumerator of enum color (RED, GREEN, BLUE)"),
             (("var", "set", "-p", t.pid, "g_float", "1e39"), 1, "g_float: 1e39 does not fit float"),
             (("var", "set", "-p", t.pid, "g_name", "sixteen chars!!!"), 1,
              "g_name: 16 bytes and the terminating NUL do not fit char[16]"),
             (("var", "undo", "-p", t.pid, "g_int"), 2, "g_int: no set of it is recorded in process"),
             (("var", "set", "-p", t.pid, "t_local", "2"), 1, "t_local: is thread-local (one per thread): not supported"),
             (("var", "get", "-p", t.pid, "g_int", "--type", "int"), None, None)]
    for args, code, message in cases:
        if code is None:
            assert ok(*args).stdout == "42\n"  # --type is for variables no DWARF describes: ignored here
            continue
        assert_one_line_error(patch_ctl(*args), code, message)
    assert values_but_counters(t) == before
    assert t.var_mappings() == []
    t.assert_running_untraced()


def test_undo_refused_when_the_program_changed_the_value(c_target):
    t = c_target
    ok("var", "set", "-p", t.pid, "part_a.c:counter", "100")
    assert t.values()["a"] == "100"  # the program advances it to 101
    assert_one_line_error(patch_ctl("var", "undo", "-p", t.pid, "part_a.c:counter"), 1,
                          "part_a.c:counter: changed since it was set to 100 (now 0x65000000): not undone")
    assert t.values()["a"] == "101"
    assert "part_a.c:counter (int) in vars" in ok("list", "-p", t.pid).stdout  # still recorded


def test_cxx_qualified_names(cxx_target):
    t = cxx_target
    before = t.values()
    assert ok("var", "get", "-p", t.pid, "g_title").stdout == "fixture\n"
    ok("var", "set", "-p", t.pid, "app::cfg::scale", "0.5")
    ok("var", "set", "-p", t.pid, "level", "9")  # app::level: unique, so its bare name does
    ok("var", "set", "-p", t.pid, "Limits::max_conn", "128")
    assert t.values() == dict(before, scale="0.5", level="9", max_conn="128")
    listing = ok("var", "list", "-p", t.pid).stdout
    assert "app::cfg::scale (double) = 0.5  [vars-cxx 0x4" in listing  # non-PIE: the link-time address
    assert_one_line_error(patch_ctl("var", "set", "-p", t.pid, "g_title", "x"), 1,
                          "g_title: setting a std::string needs the target's own methods: not supported")
    assert_one_line_error(patch_ctl("var", "set", "-p", t.pid, "g_work", "0"), 1,
                          "g_work: its type, atomic<long int>, is not one patch-ctl can set")
    for name in ("Limits::max_conn", "app::level", "app::cfg::scale"):
        ok("var", "undo", "-p", t.pid, name)
    assert t.values() == before
    assert t.var_mappings() == []
    t.assert_running_untraced()


def test_without_dwarf_a_type_is_named(nodebug_target):
    t = nodebug_target
    assert ok("var", "list", "-p", t.pid, "g_*").stdout == \
        f"no variables matching g_* described by DWARF in process {t.pid}\n"
    assert ok("var", "list", "-p", t.pid).stdout.startswith("lib_level (int) = 3  [libvarsutil.so 0x")  # its own DWARF
    assert_one_line_error(patch_ctl("var", "get", "-p", t.pid, "g_int"), 2,
                          "g_int: no DWARF describes it: give its type with --type")
    assert_one_line_error(patch_ctl("var", "set", "-p", t.pid, "g_int", "1", "--type", "i64"), 1,
                          "g_int: the symbol is 4 bytes, --type i64 is 8")
    assert_one_line_error(patch_ctl("var", "set", "-p", t.pid, "g_int", "1", "--type", "short"), 2,
                          "--type short: not one of")
    assert_one_line_error(patch_ctl("var", "set", "-p", t.pid, "g_limit", "1", "--type", "int"), 1,
                          "g_limit: lies in read-only memory (r--p) of vars-nodebug: not written")
    assert_one_line_error(patch_ctl("var", "get", "-p", t.pid, "counter", "--type", "int"), 2,
                          "counter: ambiguous, 3 variables have that name: part_a.c:counter, part_b.c:counter, "
                          "varsutil.c:counter")  # the symbol table's file symbols tell the statics apart
    ok("var", "set", "-p", t.pid, "g_int", "-3", "--type", "int")
    ok("var", "set", "-p", t.pid, "part_b.c:counter", "70", "--type", "u32")
    ok("var", "set", "-p", t.pid, "g_u16", "7", "--type", "uint")
    got = t.values()  # the program advances part_b.c:counter after printing it
    assert (got["int"], got["b"], got["u16"]) == ("-3", "70", "7")
    assert ok("var", "get", "-p", t.pid, "part_b.c:counter", "--type", "int").stdout == "71\n"
    assert ok("var", "get", "-p", t.pid, "g_u16", "--type", "i16").stdout == "7\n"
    ok("var", "undo", "-p", t.pid, "g_u16")
    ok("var", "undo", "-p", t.pid, "g_int")
    assert (t.values()["int"], t.values()["u16"]) == ("42", "60000")
    t.assert_running_untraced()


def _with_fault(fault: str, *args) -> Run:
    proc = subprocess.run(patch_ctl_argv(*args), capture_output=True, text=True, timeout=60,
                          env=dict(patch_ctl_env(), PATCH_CTL_FAULT=fault))
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_a_killed_set_is_finished_by_the_next_patch_ctl(c_target):
    t = c_target
    def states() -> list[str]:
        return [f"{v['name']}:{v['state']}" for v in json.loads(ok("list", "-p", t.pid, "--json").stdout)["variables"]]

    assert _with_fault("var-written:kill", "var", "set", "-p", t.pid, "g_int", "5").returncode == -9
    t.assert_running_untraced()
    assert states() == ["g_int:setting"] and t.values()["int"] == "5"
    run = ok("var", "set", "-p", t.pid, "g_i16", "3")  # settles it first: written, so kept
    assert "variable g_int was being set by an interrupted patch-ctl: kept" in run.stderr
    assert states() == ["g_int:set", "g_i16:set"]
    assert _with_fault("var-noted:kill", "var", "set", "-p", t.pid, "g_u8", "7").returncode == -9
    t.assert_running_untraced()
    assert states() == ["g_int:set", "g_i16:set", "g_u8:setting"] and t.values()["u8"] == "200"
    run = ok("var", "undo", "-p", t.pid, "g_i16")  # settles it first: not written, so dropped
    assert "variable g_u8 was being set by an interrupted patch-ctl: not set" in run.stderr
    assert states() == ["g_int:set"]
    ok("var", "undo", "-p", t.pid, "g_int")
    assert t.values()["int"] == "42"
    assert t.var_mappings() == []
    t.assert_running_untraced()


@pytest.fixture
def flags_target(built):
    t = Target(built / "vars-flags")
    yield t
    t.stop()


def test_gflags_through_set_command_line_option(flags_target):
    t = flags_target
    before = t.values()
    assert before["port_default"] == "1"
    listing = ok("flags", "list", "-p", t.pid).stdout.splitlines()
    assert "--port (int32) = 8080  [vars-flags]" in listing and "--limit (uint64) = 1000  [vars-flags]" in listing
    assert "--mode (std::string) = fast  [vars-flags]" in listing
    ok("flags", "set", "-p", t.pid, "port", "9090")
    long_mode = "a-mode-longer-than-fifteen-bytes"  # not stored inline in the std::string
    ok("flags", "set", "-p", t.pid, "--mode", long_mode)
    ok("flags", "set", "-p", t.pid, "FLAGS_verbose", "true")
    ok("flags", "set", "-p", t.pid, "ratio", "-0.75")
    assert t.values() == dict(before, port="9090", mode=long_mode, verbose="1", ratio="-0.75", port_default="0")
    assert ok("flags", "get", "-p", t.pid, "mode").stdout == long_mode + "\n"
    assert ok("var", "get", "-p", t.pid, "fLI::FLAGS_port").stdout == "9090\n"  # FLAGS_ are globals too
    text = ok("list", "-p", t.pid).stdout
    assert "variable --port (int32) in vars-flags at 0x" in text and ": 8080 -> 9090 [set]" in text
    for name in ("ratio", "verbose", "mode", "port"):
        ok("flags", "undo", "-p", t.pid, name)
    assert t.values() == dict(before, port_default="0")  # gflags keeps counting --port as modified
    assert t.var_mappings() == []
    t.assert_running_untraced()


def test_gflags_refusals(flags_target, c_target):
    t = flags_target
    before = t.values()
    cases = [(("flags", "set", "-p", t.pid, "port", "70000"), 1,
              "--port: gflags refused the value '70000' (not a valid int32, or its validator said no)"),
             (("flags", "set", "-p", t.pid, "ratio", "abc"), 1, "--ratio: gflags refused the value 'abc'"),
             (("flags", "set", "-p", t.pid, "nosuch", "1"), 2, "nosuch: no such flag in process"),
             (("flags", "undo", "-p", t.pid, "port"), 2, "--port: no flags set of it is recorded"),
             (("flags", "list", "-p", c_target.pid), 2,
              f"process {c_target.pid} does not use gflags (no object exports SetCommandLineOption)")]
    for args, code, message in cases:
        assert_one_line_error(patch_ctl(*args), code, message)
    assert t.values() == before  # port still its default: a refused value changes nothing
    assert t.var_mappings() == []
    ok("flags", "set", "-p", t.pid, "port", "1234")
    ok("var", "set", "-p", t.pid, "FLAGS_port", "4321")  # the program changed it behind gflags' back
    assert_one_line_error(patch_ctl("flags", "undo", "-p", t.pid, "port"), 1,
                          "--port: changed since it was set to 1234 (now 4321): not undone")
    t.assert_running_untraced()


def test_a_killed_flags_set_is_finished_by_the_next_patch_ctl(flags_target):
    t = flags_target
    assert _with_fault("flag-set:kill", "flags", "set", "-p", t.pid, "port", "7070").returncode == -9
    t.assert_running_untraced()
    assert t.values()["port"] == "7070"
    run = ok("flags", "set", "-p", t.pid, "verbose", "true")  # settles it first: done, so kept
    assert "variable --port was being set by an interrupted patch-ctl: kept" in run.stderr
    assert _with_fault("flag-set:kill", "flags", "set", "-p", t.pid, "mode", "slow").returncode == -9
    assert t.values()["mode"] == "slow"
    run = ok("flags", "undo", "-p", t.pid, "verbose")
    assert "variable --mode was being set by an interrupted patch-ctl: kept" in run.stderr
    ok("flags", "undo", "-p", t.pid, "mode")
    ok("flags", "undo", "-p", t.pid, "port")
    got = t.values()
    assert (got["port"], got["mode"], got["verbose"]) == ("8080", "fast", "0")
    assert t.var_mappings() == []


def test_single_threaded_and_bad_processes(built, tmp_path):
    t = Target(built / "vars", threads=0)
    try:
        ok("var", "set", "-p", t.pid, "g_ratio", "-1.5")
        ok("var", "set", "-p", t.pid, "g_u64", "0")
        assert (t.values()["ratio"], t.values()["u64"]) == ("-1.5", "0")
        ok("var", "undo", "-p", t.pid, "g_u64")
        ok("var", "undo", "-p", t.pid, "g_ratio")
        assert (t.values()["ratio"], t.values()["u64"]) == ("0.25", "18000000000000000000")
        t.assert_running_untraced()
    finally:
        t.stop()
    assert_one_line_error(patch_ctl("var", "get", "-p", t.pid, "g_int"), 2, f"no such process: {t.pid}")
    assert_one_line_error(patch_ctl("var", "set", "-p", "0", "g_int", "1"), 2, "no such process: 0")


def test_worker_threads_see_the_set(c_target):
    """The workers add g_step to g_work all the time: with g_step set to 0 the sum stands still."""
    t = c_target

    def work() -> int:
        return int(ok("var", "get", "-p", t.pid, "g_work").stdout)

    ok("var", "set", "-p", t.pid, "g_step", "0")
    still = work()
    assert work() == still
    ok("var", "undo", "-p", t.pid, "g_step")
    assert work() > still
    t.assert_running_untraced()
