"""patch-ctl on the running fixture server under a client load: fix, stack, revert; a shared library;
the stack check against a thread blocked in a replaced function."""
from __future__ import annotations

import json
import threading
import time

from patch_build.patchformat import integrity
from livetarget import Load, Server, assert_one_line_error, patch_ctl


def listed(server) -> list[dict]:
    run = patch_ctl("list", "-p", server.pid, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["pid"] == server.pid
    return data["patches"]


def test_fix_stack_and_revert_under_load(builds, server):
    m = builds.modules
    # state written before any patch, on a connection that stays open throughout
    before = {f"k{i}": f"value{i}" for i in range(50)}
    for k, v in before.items():
        assert server.ask(f"SET {k} {v}") == ["OK"]
    assert server.ask("SET n 10", "INCR n", "SET word abc", "INCR word") == ["OK", "VALUE 12", "OK", "VALUE 2"]
    load = Load(server)
    load.assert_progress()

    run = patch_ctl("apply", "-p", server.pid, m["incr-fix"])
    assert run.returncode == 0, run.stderr
    assert "applied incr-fix" in run.stdout
    assert server.ask("INCR n", "INCR n", "SET word abc", "INCR word") == ["VALUE 13", "VALUE 14", "OK", "VALUE 1"]
    assert [p["module"] for p in listed(server)] == ["incr-fix"]
    load.assert_progress()

    # stacked: the same function again, cumulative fix
    run = patch_ctl("apply", "-p", server.pid, m["incr-strict"])
    assert run.returncode == 0, run.stderr
    assert server.ask("INCR n", "SET word abc", "INCR word") == ["VALUE 15", "OK", "ERR not a number"]
    patches = listed(server)
    assert [p["module"] for p in patches] == ["incr-fix", "incr-strict"]
    assert patches[1]["funcs"][0]["prev"] == "incr-fix" and patches[1]["funcs"][0]["name"] == "cmd_incr"
    load.assert_progress()

    # reverting the patch underneath first is refused and changes nothing
    run = patch_ctl("revert", "-p", server.pid, "incr-fix")
    assert_one_line_error(run, 1, "incr-strict", "revert incr-strict first")
    assert server.ask("INCR word") == ["ERR not a number"]

    run = patch_ctl("revert", "-p", server.pid, "incr-strict")
    assert run.returncode == 0, run.stderr
    assert server.ask("INCR n", "INCR word") == ["VALUE 16", "VALUE 1"]  # incr-fix's behaviour again
    assert [p["module"] for p in listed(server)] == ["incr-fix"]

    assert patch_ctl("apply", "-p", server.pid, m["incr-strict"]).returncode == 0
    run = patch_ctl("revert", "-p", server.pid, "--all")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == [f"reverted incr-strict in process {server.pid}",
                                           f"reverted incr-fix in process {server.pid}"]
    assert run.stdout.splitlines()[2].startswith("pause ")  # what the target went through: every stop counted
    assert server.ask("INCR n", "SET word abc", "INCR word") == ["VALUE 18", "OK", "VALUE 2"]  # the bug is back
    assert listed(server) == [] and server.patch_mappings() == []

    # the state written before is intact, on the connection opened before the first patch
    for k, v in before.items():
        assert server.ask(f"GET {k}") == [f"VALUE {v}"]
    load.assert_progress()
    assert load.finish() > 300
    server.assert_running_untraced()


def test_shared_library(builds, server):
    load = Load(server, clients=2)
    assert server.ask("SUM abc", "SUM xy", "SUMSTATS") == ["VALUE 195", "VALUE 120", "VALUE 2 5"]  # 'c' left out
    run = patch_ctl("apply", "-p", server.pid, builds.modules["sum-fix"])
    assert run.returncode == 0, run.stderr
    # the new code counts in the library's own variables: an exported one (through the patch's GOT) and a
    # static one (.kpatch.sym.libsrvutil.so.bytes_summed,0: the object name has dots)
    assert server.ask("SUM abc", "SUM a", "SUMSTATS") == ["VALUE 294", "VALUE 97", "VALUE 4 9"]
    (patch,) = listed(server)
    assert patch["funcs"][0]["objname"] == "libsrvutil.so" and patch["funcs"][0]["name"] == "srv_checksum"
    maps = open(f"/proc/{server.pid}/maps").read()
    lib = [l for l in maps.splitlines() if l.endswith("/libsrvutil.so")]
    (start, _), = patch["mappings"]
    assert lib and abs(int(lib[0].split("-")[0], 16) - start) < 1 << 31  # mapped near the library
    assert patch_ctl("revert", "-p", server.pid, "sum-fix").returncode == 0
    assert server.ask("SUM abc", "SUMSTATS") == ["VALUE 195", "VALUE 5 12"]
    load.assert_progress()
    load.finish()


def test_executable_and_library_in_one_module(builds, server):
    """One module, two targets 2 GB and more apart (a PIE executable, a library): one mapping near each."""
    assert server.ask("SET n 1", "INCR n", "SUM abc") == ["OK", "VALUE 3", "VALUE 195"]
    run = patch_ctl("apply", "-p", server.pid, builds.modules["both"])
    assert run.returncode == 0, run.stderr
    assert server.ask("INCR n", "SUM abc") == ["VALUE 4", "VALUE 294"]
    (patch,) = listed(server)
    assert len(patch["mappings"]) == 2 and len(server.patch_mappings()) >= 2
    assert sorted(f["objname"] for f in patch["funcs"]) == ["libsrvutil.so", "server"]
    for f in patch["funcs"]:
        assert abs(f["new_addr"] - f["old_addr"]) < 1 << 31
    assert patch_ctl("revert", "-p", server.pid, "both").returncode == 0
    assert server.ask("INCR n", "SUM abc") == ["VALUE 6", "VALUE 195"]
    assert server.patch_mappings() == []


def test_local_symbol_by_position(builds, server):
    """cmd_hits reads server.c's static `hits`; stats.c has a static `hits` too (the patch names the first,
    .kpatch.sym.server.hits,1): GETs are counted, not SETs."""
    assert server.ask("SET a 1", "SET b 2", "SET c 3", "GET a", "HITS") == ["OK", "OK", "OK", "VALUE 1", "VALUE 1"]
    assert patch_ctl("apply", "-p", server.pid, builds.modules["hits-unit"]).returncode == 0
    assert server.ask("GET b", "HITS") == ["VALUE 2", "VALUE 2 gets"]
    assert_one_line_error(patch_ctl("apply", "-p", server.pid, builds.modules["hits-unit"]), 1, "already applied")
    assert len(listed(server)) == 1


def test_endbr64_prologue(builds):
    """With -fcf-protection every function starts with endbr64: the jump goes after it, so indirect calls
    (the command table) still land on a valid target."""
    srv = Server(builds.cet)
    try:
        assert srv.ask("SET n 1", "INCR n") == ["OK", "VALUE 3"]
        assert patch_ctl("apply", "-p", srv.pid, builds.modules["incr-fix-cet"]).returncode == 0
        assert srv.ask("INCR n") == ["VALUE 4"]
        (patch,) = listed(srv)
        func = patch["funcs"][0]
        assert func["site"] == func["old_addr"] + 4
        with open(f"/proc/{srv.pid}/mem", "rb") as mem:
            mem.seek(func["old_addr"])
            code = mem.read(9)
        assert code[:4] == bytes.fromhex("f30f1efa") and code[4] == 0xE9
        assert patch_ctl("revert", "-p", srv.pid, "--all").returncode == 0
        assert srv.ask("INCR n") == ["VALUE 6"]
    finally:
        srv.stop()


def test_main_thread_exited(builds):
    """A server whose main thread called pthread_exit: it is a zombie while the process runs on, so the
    process is reached through the other threads (memory, maps, system calls)."""
    srv = Server(builds.deployed, 4, "main-exits")
    try:
        deadline = time.monotonic() + 10
        while srv.status()["State"][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert srv.ask("SET n 1", "INCR n") == ["OK", "VALUE 3"]
        assert patch_ctl("apply", "-p", srv.pid, builds.modules["incr-fix"]).returncode == 0
        assert srv.ask("INCR n") == ["VALUE 4"]
        assert patch_ctl("revert", "-p", srv.pid, "--all").returncode == 0
        assert srv.ask("INCR n") == ["VALUE 6"] and srv.patch_mappings() == []
    finally:
        srv.stop()


def test_function_too_short_is_refused(builds, server, tmp_path):
    """A module whose function resolves to one too short for the jump (cmd_noop is a lone `ret`): the
    module is hold-reply's with its function's name changed to cmd_noop (same length)."""
    data = builds.modules["hold-reply"].read_bytes()
    assert data.count(b"cmd_hold\0") >= 1
    bad = tmp_path / "noop.kpatch"
    bad.write_bytes(data.replace(b"cmd_hold\0", b"cmd_noop\0"))
    integrity.seal(bad)  # a digest that matches: the check behind it is what is tested
    run = patch_ctl("apply", "-p", server.pid, bad)
    assert_one_line_error(run, 1, "cmd_noop", "too short")
    assert server.patch_mappings() == [] and server.ask("NOOP") == [""]
    server.assert_running_untraced()


def test_info(builds):
    run = patch_ctl("info", builds.modules["incr-strict"])
    assert run.returncode == 0, run.stderr
    assert "module incr-strict" in run.stdout and "function server:cmd_incr" in run.stdout
    run = patch_ctl("info", "--json", builds.modules["sum-fix"])
    info = json.loads(run.stdout)
    assert info["name"] == "sum-fix" and info["targets"][0]["name"] == "libsrvutil.so"
    assert len(info["targets"][0]["build_id"]) == 40
    assert [(f["objname"], f["name"]) for f in info["funcs"]] == [("libsrvutil.so", "srv_checksum")]


def test_thread_blocked_in_replaced_function(builds, server):
    load = Load(server, clients=2)
    held = server.connect()
    held.send("HOLD")  # a worker now waits inside cmd_hold
    time.sleep(0.5)
    start = time.monotonic()
    run = patch_ctl("apply", "-p", server.pid, "--timeout", "1", builds.modules["hold-reply"])
    assert_one_line_error(run, 1, "cmd_hold", "thread ", "stack", "gave up after 1 s")
    assert time.monotonic() - start < 30
    # untouched: no patch recorded or mapped, every thread running, requests served all along
    assert listed(server) == [] and server.patch_mappings() == []
    server.assert_running_untraced()
    load.assert_progress()

    run = patch_ctl("apply", "-p", server.pid, "--no-stack-check", builds.modules["hold-reply"])
    assert run.returncode == 0, run.stderr
    assert server.ask("RELEASE") == ["OK"]
    assert held.file.readline().strip() == "RELEASED"  # the held call finishes in the old code
    # a new call runs the new one; while it waits there, the patch cannot be reverted (it would be unmapped
    # under the thread)
    result = []
    t = threading.Thread(target=lambda: result.append(held.ask("HOLD")))
    t.start()
    time.sleep(0.5)
    run = patch_ctl("revert", "-p", server.pid, "--timeout", "1", "hold-reply")
    assert_one_line_error(run, 1, "hold-reply (patch code)", "thread ")
    assert [p["state"] for p in listed(server)] == ["active"]
    assert server.ask("RELEASE") == ["OK"]
    t.join(10)
    assert result == ["RELEASED v2"]
    assert patch_ctl("revert", "-p", server.pid, "--all").returncode == 0
    assert listed(server) == [] and server.patch_mappings() == []
    held.close()
    load.assert_progress()
    load.finish()
