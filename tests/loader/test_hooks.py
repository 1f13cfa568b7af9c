"""Patch hooks (patch-hooks.h) and shadow variables (patch-shadow.h) on the live fixture server: modules
built by the real patch-build from fixtures/server/hooks.patch and entry-reads.patch."""
from __future__ import annotations

import json
import tempfile

import pytest

from patch_build.kbuild.options import BuildOptions
from patch_build.kbuild.userspace import build_user_patch
from livetarget import FIXTURE, Load, Server, assert_one_line_error, patch_ctl

pytestmark = pytest.mark.slow  # two modules built, servers patched live: about 40 s


@pytest.fixture(scope="module")
def modules(builds, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("hook-modules")
    saved = tempfile.tempdir
    tempfile.tempdir = str(out)  # patch-build's scratch trees
    try:
        return {name: build_user_patch(BuildOptions(patches=[FIXTURE / f"{name}.patch"], srcdir=builds.src,
                                                    targets=["server"], name=name, outdir=out, jobs=1,
                                                    target_binaries=[builds.deployed / "server"])).module
                for name in ("hooks", "entry-reads")}
    finally:
        tempfile.tempdir = saved


@pytest.fixture
def traced(builds, tmp_path, monkeypatch):
    """A server whose hooks (hooks.patch) write their trace to a file; HOOK_REFUSE set by the test."""
    trace = tmp_path / "trace"
    monkeypatch.setenv("HOOK_TRACE", str(trace))
    servers = []

    def start(**env) -> tuple[Server, object]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        servers.append(Server(builds.deployed))
        return servers[-1], trace

    yield start
    for srv in servers:
        srv.stop()


def _listed(server) -> list[dict]:
    run = patch_ctl("list", "-p", server.pid, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["patches"]


def test_info_lists_hooks(modules):
    run = patch_ctl("info", modules["hooks"])
    assert run.returncode == 0, run.stderr
    hooks = [l for l in run.stdout.splitlines() if l.startswith("hook ")]
    assert hooks == ["hook pre_apply before_apply", "hook post_apply after_apply", "hook pre_revert before_revert",
                     "hook post_revert after_revert"]
    data = json.loads(patch_ctl("info", "--json", modules["entry-reads"]).stdout)
    assert data["hooks"] == [{"stage": "post_revert", "function": "free_reads"}]


def test_hooks_run_in_order_in_the_target(modules, traced):
    server, trace = traced()
    load = Load(server)
    run = patch_ctl("apply", "-p", server.pid, modules["hooks"])
    assert run.returncode == 0, run.stderr
    assert trace.read_text().splitlines() == [f"pre_apply {server.pid}", f"post_apply {server.pid}"]
    assert server.ask("HITS")[0].endswith(" gets")
    patch = _listed(server)[0]
    assert sorted(patch["hooks"]) == ["post_apply", "post_revert", "pre_apply", "pre_revert"]
    lo, hi = patch["code"][0]
    assert all(lo <= addr < hi for [[_, addr]] in patch["hooks"].values())  # the hooks run the patch's own code
    load.assert_progress()

    run = patch_ctl("revert", "-p", server.pid, "hooks")
    assert run.returncode == 0, run.stderr
    assert trace.read_text().splitlines() == [f"{stage} {server.pid}" for stage in
                                              ("pre_apply", "post_apply", "pre_revert", "post_revert")]
    assert not server.ask("HITS")[0].endswith(" gets")
    assert server.patch_mappings() == []
    load.assert_progress()
    load.finish()
    server.assert_running_untraced()


def _lasting_mappings(pid: int) -> list[str]:
    """/proc/PID/maps without unnamed anonymous data (the stacks and arenas of the server's connection threads,
    which come and go with its clients): what a patch-ctl could leave behind is named, file-backed or executable."""
    with open(f"/proc/{pid}/maps") as f:
        lines = f.read().splitlines()
    return [l for l in lines if not (len(l.split()) == 5 and l.split()[1] in ("rw-p", "---p"))]


def test_pre_apply_hook_refusal_leaves_the_target_as_it_was(modules, traced):
    server, trace = traced(HOOK_REFUSE="7")
    maps_before = _lasting_mappings(server.pid)
    run = patch_ctl("apply", "-p", server.pid, modules["hooks"])
    assert_one_line_error(run, 1, "before_apply", "pre_apply hook of hooks returned 7", "not applied")
    assert trace.read_text().splitlines() == [f"pre_apply {server.pid}"]  # no other hook ran
    assert server.patch_mappings() == [] and _listed(server) == []
    assert server.ask("HITS") == ["VALUE 0"]
    assert _lasting_mappings(server.pid) == maps_before
    server.assert_running_untraced()


def test_shadow_variable_on_live_objects(modules, builds):
    """entry-reads.patch counts the GETs of each table entry in a field the entries never had: entries made
    before the patch get it at their first GET; the revert's hook frees them all."""
    server = Server(builds.deployed)
    try:
        assert server.ask("SET a 1", "SET b 2", "GET a") == ["OK", "OK", "VALUE 1"]
        load = Load(server, get_reply=r"VALUE {}( reads [0-9]+)?")  # its GETs counted too while patched
        run = patch_ctl("apply", "-p", server.pid, modules["entry-reads"])
        assert run.returncode == 0, run.stderr
        assert server.ask("GET a", "GET a", "GET b", "SET c 3", "GET c", "GET a") == [
            "VALUE 1 reads 1", "VALUE 1 reads 2", "VALUE 2 reads 1", "OK", "VALUE 3 reads 1", "VALUE 1 reads 3"]
        other = server.connect()  # the counter belongs to the entry, not to the connection
        assert other.ask("GET b") == "VALUE 2 reads 2"
        other.close()
        load.assert_progress()
        run = patch_ctl("revert", "-p", server.pid, "entry-reads")
        assert run.returncode == 0, run.stderr
        assert server.ask("GET a", "GET c") == ["VALUE 1", "VALUE 3"]
        assert server.patch_mappings() == []
        load.assert_progress()
        load.finish()
        # applied again: a fresh table, counting from 1
        assert patch_ctl("apply", "-p", server.pid, modules["entry-reads"]).returncode == 0
        assert server.ask("GET a") == ["VALUE 1 reads 1"]
        server.assert_running_untraced()
    finally:
        server.stop()
