"""Reverting a patch that is not the newest: allowed when no later patch depends on it, refused by name
when one stacks on it or calls a function it replaced (reverting it would change what that one runs)."""
from __future__ import annotations

import json

import pytest

from livetarget import Load, assert_one_line_error, patch_ctl


def modules(server) -> list[str]:
    run = patch_ctl("list", "-p", server.pid, "--json")
    assert run.returncode == 0, run.stderr
    return [p["module"] for p in json.loads(run.stdout)["patches"]]


def test_independent_patch_reverted_from_underneath(builds, server):
    m = builds.modules
    for name in ("incr-fix", "hits-unit"):
        assert patch_ctl("apply", "-p", server.pid, m[name]).returncode == 0
    run = patch_ctl("revert", "-p", server.pid, "incr-fix")  # hits-unit, applied later, shares nothing with it
    assert run.returncode == 0, run.stderr
    assert modules(server) == ["hits-unit"]
    assert server.ask("INCR k", "HITS") == ["VALUE 2", "VALUE 0 gets"]  # incr's bug is back, hits still fixed


def test_patch_whose_replaced_function_a_later_one_calls(builds, server):
    m = builds.modules
    for name in ("sum-fix", "sum-tag", "incr-fix"):
        assert patch_ctl("apply", "-p", server.pid, m[name]).returncode == 0
    assert server.ask("SUM ab") == ["VALUE 195 sum"]
    (sum_tag,) = [p for p in json.loads(patch_ctl("list", "-p", server.pid, "--json").stdout)["patches"]
                  if p["module"] == "sum-tag"]
    assert sum_tag["depends"] == ["sum-fix"]  # its cmd_sum calls srv_checksum, which sum-fix replaced
    assert_one_line_error(patch_ctl("revert", "-p", server.pid, "sum-fix"), 1, "sum-tag", "revert sum-tag first")
    assert server.ask("SUM ab") == ["VALUE 195 sum"]  # nothing changed
    assert patch_ctl("revert", "-p", server.pid, "sum-tag").returncode == 0
    assert patch_ctl("revert", "-p", server.pid, "sum-fix").returncode == 0
    assert modules(server) == ["incr-fix"]
    assert server.ask("SUM ab", "INCR k") == ["VALUE 97", "VALUE 1"]


@pytest.mark.slow
def test_hundred_apply_revert_cycles_under_load(builds):
    """The 16-thread server under client load, patched and reverted 100 times (in-process: the library
    calls patch-ctl makes): not one failed request, and the behaviour flips each time."""
    from patch_build.loader.apply import apply_patch
    from patch_build.loader.revert import revert_patches
    from livetarget import Server

    server = Server(builds.deployed, 16)
    try:
        load = Load(server, clients=4)
        module = str(builds.modules["incr-fix"])
        for i in range(100):
            record, stats = apply_patch(server.pid, module)
            assert record.state == "active" and stats.pause < 1.0
            assert server.ask(f"INCR c{i}") == ["VALUE 1"]
            done, _ = revert_patches(server.pid, "incr-fix")
            assert [r.module for r in done] == ["incr-fix"]
            assert server.ask(f"INCR d{i}") == ["VALUE 2"]
        load.assert_progress()
        assert load.finish() > 100  # finish() asserts that no request failed or got a wrong reply
        server.assert_running_untraced()
        assert server.patch_mappings() == []
    finally:
        server.stop()
