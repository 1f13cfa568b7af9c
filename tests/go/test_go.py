"""Go programs (issue 16): a fix built from a patch with Debian's Go toolchain, loaded live into the running
counter server through its agent, under client load; stacked, reverted; and what is refused, by name, with
the target left unharmed."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, go_env, tool
from patch_build.common.errors import Refused
from patch_build.loader.golang import agent_dir, ask_agent
from server import Load, Server

pytestmark = pytest.mark.slow


def one_line_error(run, code: int, *fragments: str) -> None:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [l for l in run.stderr.splitlines() if l.strip() and "error:" in l]
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], run.stderr


def wait_for(load: Load, count: int) -> None:
    """Until every load client has seen `count` more replies."""
    marks = [len(r) for r in load.replies]
    deadline = time.monotonic() + 20
    while any(len(r) < m + count for r, m in zip(load.replies, marks)):
        assert time.monotonic() < deadline and not load.errors, load.errors
        time.sleep(0.01)


def test_fix_live_under_load_stacked_and_reverted(go_tree, fixes):
    server = Server(go_tree.counter, env={"GODEBUG": "gctrace=1"})  # each collection says so
    try:
        agent = os.stat(f"/tmp/patchbuild-go.{server.pid}")
        assert agent.st_mode & 0o777 == 0o700 and agent.st_uid == os.getuid()
        kept = server.client()
        assert kept.ask("deep 100000") == "deep 100001"  # the bug fix2 fixes
        assert kept.ask("incr a") == "a 2"  # the bug: counted twice
        assert kept.ask("incr a") == "a 4"
        load = Load(server)
        wait_for(load, 5)
        assert all(step == 2 for i in range(4) for step in load.steps(i, 3))
        conns = kept.ask("conns")
        assert conns == "conns 5"

        run = tool("loader", "apply", "-p", server.pid, fixes["fix"])
        assert run.returncode == 0, run.stderr
        assert "applied fix" in run.stdout
        wait_for(load, 5)
        assert server.alive()
        assert kept.ask("incr a") == "a 5"  # same connection, state kept, fixed
        assert kept.ask("conns") == conns  # no connection dropped
        assert all(step == 1 for i in range(4) for step in load.steps(i, 3)), load.replies

        run = tool("loader", "apply", "-p", server.pid, fixes["fix2"])
        assert run.returncode == 0, run.stderr
        assert kept.ask("incr ") == " 0"  # fix2: an empty key is not counted
        forced = server.stderr().count("(forced)")
        # the new depth: 300000 frames of plugin code on one goroutine's stack, copied as it grows, then
        # walked by a collection (the runtime finds their stack maps in the plugin's pclntab)
        assert kept.ask("deep 100000") == "deep 100000"
        assert kept.ask("deep 300000") == "deep 300000"
        assert server.stderr().count("(forced)") == forced + 2
        assert kept.ask("incr a") == "a 6"
        listing = tool("loader", "list", "-p", server.pid, "--json")
        records = json.loads(listing.stdout)["patches"]
        assert [r["module"] for r in records] == ["fix", "fix2"]
        assert {f["name"].rsplit(".", 1)[-1]: f["prev"] for f in records[1]["funcs"]} == \
            {"Handle": "fix", "add": "fix", "depth": None}  # over fix where fix replaced it
        assert all(os.path.basename(r["library"]).startswith(f"{r['module']}-") for r in records)

        one_line_error(tool("loader", "revert", "-p", server.pid, "fix"), 1, "revert fix2 first")
        assert kept.ask("incr a") == "a 7"
        assert tool("loader", "revert", "-p", server.pid, "fix2").returncode == 0
        assert kept.ask("incr ") == " 1"  # fix again, without fix2
        assert kept.ask("incr a") == "a 8"
        assert tool("loader", "revert", "-p", server.pid, "fix").returncode == 0
        assert kept.ask("incr a") == "a 10"  # the original code again
        wait_for(load, 5)
        assert all(step == 2 for i in range(4) for step in load.steps(i, 3))

        run = tool("loader", "apply", "-p", server.pid, fixes["fix"])  # again: its plugin is still loaded
        assert run.returncode == 0, run.stderr
        assert kept.ask("incr a") == "a 11"
        load.finish()
        assert not load.errors
        deadline = time.monotonic() + 10  # the server sees the load's connections close, ours kept
        while kept.ask("conns") != "conns 1":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.alive()
    finally:
        server.stop()


@pytest.mark.parametrize("patch, fragments", [
    ("signature.patch", ["(*Store).add", "changed signature"]),
    ("initializer.patch", ["greeting", "initialisers are not run again"]),
    ("layout.patch", ["Store", "changed type"]),
    ("small.patch", ["(*Store).keys", "too small for the jump"]),
    ("identity.patch", ["(*Store).add", "uses the identity of a type of its package"]),
])
def test_refused_by_name(go_tree, patch, fragments):
    name = patch.removesuffix(".patch")
    run = go_tree.build(patch)
    one_line_error(run, 1, *fragments)
    assert not (go_tree.out / f"{name}.gopatch").exists()
    report = json.loads((go_tree.out / f"{name}.report.json").read_text())
    assert report["status"] == "refused"
    assert any(fragments[0] in p["symbol"] for o in report["objects"] for p in o["rejected"]), report


def test_build_refuses_a_program_without_the_agent(go_tree):
    one_line_error(go_tree.build("fix.patch", name="noagent", binary=go_tree.noagent), 1,
                   "does not import the patch-build agent")


@pytest.mark.parametrize("which, fragments", [
    ("noagent", ["no patch-build agent"]),
    ("other", ["runs another build", "build-id"]),
])
def test_apply_refused_target_unharmed(go_tree, fixes, which, fragments):
    server = Server(getattr(go_tree, which))
    try:
        kept = server.client()
        assert kept.ask("incr a") == "a 2"
        one_line_error(tool("loader", "apply", "-p", server.pid, fixes["fix"]), 1, *fragments)
        assert server.alive()
        assert kept.ask("incr a") == "a 4"  # as before: nothing was changed
        assert tool("loader", "list", "-p", server.pid).stdout.strip() == f"no patches in process {server.pid}"
    finally:
        server.stop()


def test_info_and_a_changed_plugin(go_tree, fixes, tmp_path):
    run = tool("loader", "info", fixes["fix"])
    assert run.returncode == 0, run.stderr
    assert "function example.com/counter/internal/counter.(*Store).add" in run.stdout
    assert "go1." in run.stdout
    with tarfile.open(fixes["fix"]) as tar:
        plugin = tar.getmember("plugin.so")
    data = bytearray(fixes["fix"].read_bytes())
    data[plugin.offset_data + plugin.size // 2] ^= 0xFF
    bad = tmp_path / "fix.gopatch"
    bad.write_bytes(bytes(data))
    one_line_error(tool("loader", "info", bad), 2, "SHA-256")


def test_bad_gopatch_is_one_line(go_tree, tmp_path):
    bad = tmp_path / "bad.gopatch"
    bad.write_bytes(b"not a tar at all\n" * 100)
    one_line_error(tool("loader", "info", bad), 2, "bad.gopatch", "not a .gopatch")
    one_line_error(tool("loader", "apply", "-p", os.getpid(), bad), 2, "bad.gopatch")


def test_same_inputs_same_gopatch(go_tree, fixes, tmp_path):
    run = tool("kbuild", "-s", go_tree.src, "-t", go_tree.counter, "-o", tmp_path, "-n", "fix",
               FIXTURES / "fix.patch", env={"PYTHONHASHSEED": "123"})
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "fix.gopatch").read_bytes() == fixes["fix"].read_bytes()
    assert (tmp_path / "fix.report.json").read_bytes() == (go_tree.out / "fix.report.json").read_bytes()


def test_bad_targets_are_one_line(go_tree, tmp_path):
    stripped = tmp_path / "stripped"
    subprocess.run(["go", "build", "-ldflags=-s", "-o", str(stripped), "."], cwd=go_tree.src, check=True,
                   env=go_env(tmp_path), capture_output=True)
    one_line_error(go_tree.build("fix.patch", binary=stripped), 1, "no symbol table")
    one_line_error(go_tree.build("fix.patch", binary=Path("/bin/ls")), 2, "not a Go program with build info")
    one_line_error(tool("kbuild", "--lang", "rust", "-s", go_tree.src, "-t", go_tree.counter,
                        FIXTURES / "fix.patch"), 2, "--lang rust")
    one_line_error(tool("kbuild", "--package", "deb", "-s", go_tree.src, "-t", go_tree.counter,
                        FIXTURES / "fix.patch"), 2, "Go patches (.gopatch) are not packaged")


def test_report_explains_each_function_with_its_hunk(go_tree, fixes):
    report = json.loads((go_tree.out / "fix.report.json").read_text())
    [obj] = report["objects"]
    assert obj["original"] == "example.com/counter/internal/counter"
    functions = {f["name"].rsplit(".", 1)[-1]: f for f in obj["functions"]}
    assert set(functions) == {"Handle", "add"}  # Handle inlines add: it changed with it
    for f in functions.values():
        assert f["status"] == "changed"
        assert [e["hunk"] for e in f["explained_by"]] == [1], f
    diffs = {d["name"].rsplit(".", 1)[-1]: d for d in obj["diffs"]}
    assert any(r["tag"] == "delete" and "mapassign_faststr" in r["old_text"] for r in diffs["add"]["rows"])
    assert report["details"]["language"] == "go"


def test_build_refuses_a_binary_of_other_sources(go_tree, tmp_path):
    """The deployed program must run the code SRCDIR builds: here it was built with the fix already in."""
    other = tmp_path / "src"
    shutil.copytree(go_tree.src, other)
    subprocess.run(["patch", "-s", "-p1", "-i", str(FIXTURES / "fix.patch")], cwd=other, check=True)
    binary = tmp_path / "counter"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=other, check=True, env=go_env(tmp_path),
                   capture_output=True)
    one_line_error(go_tree.build("fix2.patch", binary=binary, name="othersrc"), 1,
                   "does not run the code SRCDIR builds")


def test_agent_is_the_program_users_only(go_tree):
    server = Server(go_tree.counter)
    try:
        sock = f"/tmp/patchbuild-go.{server.pid}/agent.sock"
        child = os.fork()
        if child == 0:  # another user (nobody) cannot reach the socket
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                socket.socket(socket.AF_UNIX).connect(sock)
                code = 0
            except PermissionError:
                code = 13
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] >> 8 == 13
        with pytest.raises(Refused, match="could not load the fix: plugin.Open"):
            ask_agent(server.pid, agent_dir(server.pid), "/etc/hostname")  # not a plugin: its error, as text
        assert server.client().ask("incr a") == "a 2"
    finally:
        server.stop()


def test_closure_fixed_alone(go_tree):
    """A closure whose function did not change is replaced by itself: the function's closure value (made by
    the program's code, with the program's context layout) now runs the new body."""
    run = go_tree.build("closure.patch")
    assert run.returncode == 0, run.stderr
    report = json.loads((go_tree.out / "closure.report.json").read_text())
    assert [f["name"] for o in report["objects"] for f in o["functions"]] == \
        ["example.com/counter/internal/counter.(*Store).total.func1"]
    server = Server(go_tree.counter)
    try:
        kept = server.client()
        for line in ("incr a", "incr a", "incr b"):
            kept.ask(line)
        assert kept.ask("total") == "total 2"  # the bug: the keys counted, not their counts (4 + 2)
        run = tool("loader", "apply", "-p", server.pid, go_tree.out / "closure.gopatch")
        assert run.returncode == 0, run.stderr
        assert kept.ask("total") == "total 6"
        assert tool("loader", "revert", "-p", server.pid, "closure").returncode == 0
        assert kept.ask("total") == "total 2"
    finally:
        server.stop()


def test_another_build_of_a_loaded_name_is_refused(go_tree, fixes, tmp_path):
    """The runtime keeps a plugin by its path: another fix of the same name cannot be loaded next to it,
    and must not be mistaken for it."""
    run = tool("kbuild", "-s", go_tree.src, "-t", go_tree.counter, "-o", tmp_path, "-n", "fix",
               FIXTURES / "fix.patch", FIXTURES / "fix2.patch")
    assert run.returncode == 0, run.stderr
    server = Server(go_tree.counter)
    try:
        kept = server.client()
        assert tool("loader", "apply", "-p", server.pid, fixes["fix"]).returncode == 0
        assert tool("loader", "revert", "-p", server.pid, "fix").returncode == 0
        one_line_error(tool("loader", "apply", "-p", server.pid, tmp_path / "fix.gopatch"), 1,
                       "plugin already loaded")
        assert kept.ask("incr ") == " 2"  # neither fix runs: the original code
        assert tool("loader", "list", "-p", server.pid).stdout.strip() == f"no patches in process {server.pid}"
    finally:
        server.stop()
