"""Shared libraries in the live fixture server under load (loader/libraries.py): `lib load`/`lib unload`,
`redirect`/`restore`, and hand-written patch libraries (`apply fix.so` with a PATCH_REPLACE table). Each
command's visible effect is checked and then undone; refusals leave the target running, untraced, with
nothing of ours mapped. The libraries are built here with the real gcc and the header we ship."""
from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from livetarget import FIXTURE, REPO, Load, Run, Server, assert_one_line_error, patch_ctl, patch_ctl_argv, \
    patch_ctl_env

pytestmark = pytest.mark.slow  # its own server tree and libraries, built and patched live: about a minute

INCLUDE = REPO / "templates" / "user" / "include"
# SUM's replies: the fixture's srv_checksum leaves the last byte out; srv_checksum_v2 counts every byte
# from 1000; cmd_sum_v2 tags its reply
ORIGINAL, SUM_V2, BOTH_V2 = "VALUE 195", "VALUE 195 v2", "VALUE 1294 v2"

# cmd_sum_v2 replaces a function of the program, srv_checksum_v2 one of its library (libsrvutil.so), and
# cmd_hold_v2 one a worker can be made to sit in (HOLD): the stack check.
FIX = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "patch-replace.h"
unsigned long srv_checksum(const char *text);
void cmd_sum_v2(char *arg, char *out, size_t size)
{
	snprintf(out, size, "VALUE %lu v2", srv_checksum(arg));
}
unsigned long srv_checksum_v2(const char *text)
{
	unsigned long n = 1000;
	while (*text)
		n += (unsigned char)*text++;
	return n;
}
void cmd_hold_v2(char *arg, char *out, size_t size)
{
	usleep(atoi(arg) * 1000);  /* HOLD MS: long enough to be found running here */
	snprintf(out, size, "HELD v2");
}
PATCH_REPLACE(cmd_sum, cmd_sum_v2);
PATCH_REPLACE(srv_checksum, srv_checksum_v2);
"""
NO_TABLE = "int answer(void) { return 42; }\n"
UNKNOWN_OLD = '#include "patch-replace.h"\nint v2(void) { return 1; }\nPATCH_REPLACE(no_such_function, v2);\n'
UNRESOLVED = ('#include "patch-replace.h"\nint missing_everywhere(void);\n'
              'int v2(void) { return missing_everywhere(); }\nPATCH_REPLACE(cmd_noop, v2);\n')


def _shared(src: str, out: Path) -> Path:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", f"-I{INCLUDE}", "-o", str(out), str(c)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("libs")
    tree = root / "server"
    shutil.copytree(FIXTURE, tree)
    subprocess.run(["make", "-s"], cwd=tree, check=True, capture_output=True)
    (root / "junk.so").write_text("not a library\n")
    return {"tree": tree, "fix": _shared(FIX, root / "fix.so"), "notable": _shared(NO_TABLE, root / "notable.so"),
            "unknown": _shared(UNKNOWN_OLD, root / "unknown.so"),
            "unresolved": _shared(UNRESOLVED, root / "unresolved.so"), "junk": root / "junk.so"}


@pytest.fixture
def srv(libs):
    s = Server(libs["tree"])
    yield s
    s.stop()


def ok(run: Run) -> Run:
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    return run


def mapped(server: Server, lib: Path) -> bool:
    with open(f"/proc/{server.pid}/maps") as f:
        return any(str(lib) in line for line in f)


def listed(server: Server) -> list[dict]:
    return json.loads(ok(patch_ctl("list", "-p", server.pid, "--json")).stdout)["patches"]


def unharmed(server: Server, lib: Path | None = None) -> None:
    """Running, untraced, answering as originally, nothing of ours left in it."""
    server.assert_running_untraced()
    assert server.ask("SUM abc") == [ORIGINAL]
    assert server.patch_mappings() == []
    assert listed(server) == []
    if lib is not None:
        assert not mapped(server, lib)


def test_patch_library_applied_and_reverted_under_load(srv, libs):
    fix = libs["fix"]
    assert srv.ask("SUM abc") == [ORIGINAL]
    load = Load(srv)
    run = ok(patch_ctl("apply", "-p", srv.pid, fix))
    assert f"applied fix to process {srv.pid}: 2 function(s) redirected" in run.stdout
    # the program's cmd_sum now runs cmd_sum_v2, which calls the library's srv_checksum, now srv_checksum_v2
    assert srv.ask("SUM abc") == [BOTH_V2]
    assert mapped(srv, fix)
    [record] = listed(srv)
    assert (record["module"], record["state"], record["library"]) == ("fix", "active", str(fix))
    assert record["handle"] != 0
    assert sorted(f"{f['objname']}:{f['name']}" for f in record["funcs"]) == \
        ["libsrvutil.so:srv_checksum", "server:cmd_sum"]
    text = ok(patch_ctl("list", "-p", srv.pid)).stdout
    assert f"library {fix} (loaded by it)" in text and "server:cmd_sum" in text
    load.assert_progress()
    run = ok(patch_ctl("revert", "-p", srv.pid, "fix"))
    assert "reverted fix" in run.stdout
    assert srv.ask("SUM abc") == [ORIGINAL]
    assert not mapped(srv, fix)  # dlclose'd: its only handle was the patch's
    load.assert_progress()
    load.finish()
    unharmed(srv, fix)


def test_lib_load_redirect_restore_unload(srv, libs):
    fix = libs["fix"]
    load = Load(srv)
    run = ok(patch_ctl("lib", "load", "-p", srv.pid, fix))
    assert f"loaded {fix} in process {srv.pid} as lib:fix.so" in run.stdout
    assert mapped(srv, fix) and srv.ask("SUM abc") == [ORIGINAL]  # loading changes nothing by itself
    assert [(r["module"], r["funcs"]) for r in listed(srv)] == [("lib:fix.so", [])]

    ok(patch_ctl("redirect", "-p", srv.pid, "cmd_sum", "cmd_sum_v2"))  # NEW from the library lib load loaded
    assert srv.ask("SUM abc") == [SUM_V2]
    ok(patch_ctl("redirect", "-p", srv.pid, "libsrvutil.so:srv_checksum", "fix.so:srv_checksum_v2"))
    assert srv.ask("SUM abc") == [BOTH_V2]
    assert [r["module"] for r in listed(srv)] == ["lib:fix.so", "redirect:server:cmd_sum",
                                                  "redirect:libsrvutil.so:srv_checksum"]
    load.assert_progress()

    run = patch_ctl("lib", "unload", "-p", srv.pid, "fix.so")
    assert_one_line_error(run, 1, "fix.so: in use: redirect:")
    assert mapped(srv, fix) and srv.ask("SUM abc") == [BOTH_V2]  # refused: nothing changed

    ok(patch_ctl("restore", "-p", srv.pid, "srv_checksum"))
    assert srv.ask("SUM abc") == [SUM_V2]
    ok(patch_ctl("restore", "-p", srv.pid, "server:cmd_sum"))
    assert srv.ask("SUM abc") == [ORIGINAL]
    run = ok(patch_ctl("lib", "unload", "-p", srv.pid, "fix.so"))
    assert f"unloaded {fix}" in run.stdout
    load.assert_progress()
    load.finish()
    unharmed(srv, fix)


def test_redirect_waits_for_the_function_to_leave_every_stack(srv, libs):
    ok(patch_ctl("lib", "load", "-p", srv.pid, libs["fix"]))
    held = srv.connect()
    held.send("HOLD")  # a worker now sits inside cmd_hold until RELEASE
    time.sleep(0.3)
    run = patch_ctl("redirect", "-p", srv.pid, "cmd_hold", "cmd_hold_v2", "--timeout", "0.5")
    assert_one_line_error(run, 1, "cmd_hold: thread", "gave up after 0.5 s")
    assert srv.ask("RELEASE") == ["OK"]
    assert held.file.readline().strip() == "RELEASED"
    held.close()
    ok(patch_ctl("redirect", "-p", srv.pid, "cmd_hold", "cmd_hold_v2"))
    assert srv.ask("HOLD") == ["HELD v2"]
    ok(patch_ctl("revert", "-p", srv.pid, "--all"))  # redirect and library alike, newest first
    srv.assert_running_untraced()
    assert srv.patch_mappings() == [] and listed(srv) == [] and not mapped(srv, libs["fix"])


def test_unload_waits_for_the_library_code_to_leave_every_stack(srv, libs):
    """A restored redirect sends no new calls into the library, but a call made before may still run in it:
    the library is dlclose'd only once no thread has its code on its stack."""
    ok(patch_ctl("lib", "load", "-p", srv.pid, libs["fix"]))
    ok(patch_ctl("redirect", "-p", srv.pid, "cmd_hold", "cmd_hold_v2"))
    held = srv.connect()
    held.send("HOLD 8000")  # a worker now sleeps 8 s inside cmd_hold_v2
    time.sleep(0.3)
    ok(patch_ctl("restore", "-p", srv.pid, "cmd_hold"))  # nothing runs the stub now: allowed
    run = patch_ctl("lib", "unload", "-p", srv.pid, "fix.so", "--timeout", "0.3")
    assert_one_line_error(run, 1, "lib:fix.so (library fix.so): thread", "gave up after 0.3 s")
    assert select.select([held.sock], [], [], 0)[0] == [], "the held call ended before the unload was tried"
    assert mapped(srv, libs["fix"]) and [r["module"] for r in listed(srv)] == ["lib:fix.so"]
    assert held.file.readline().strip() == "HELD v2"  # the call made before the restore ends in the library
    held.close()
    ok(patch_ctl("lib", "unload", "-p", srv.pid, "fix.so"))
    srv.assert_running_untraced()
    assert srv.patch_mappings() == [] and listed(srv) == [] and not mapped(srv, libs["fix"])


@pytest.mark.parametrize("preload, args, code, fragment", [
    (True, ("redirect", "cmd_nosuch", "fix.so:cmd_sum_v2"), 1, "cmd_nosuch: no such function in process"),
    (True, ("redirect", "cmd_sum", "fix.so:nosuch_v2"), 1, "fix.so:nosuch_v2: no such function in fix.so"),
    (True, ("redirect", "cmd_noop", "fix.so:cmd_sum_v2"), 1, "cmd_noop: is 1 bytes, too short"),
    (False, ("redirect", "cmd_sum", "cmd_sum_v2"), 1, "no library loaded with `patch-ctl lib load`"),
    (False, ("redirect", "cmd_sum", "fix.so:cmd_sum_v2"), 1, "fix.so: no such library loaded"),
    (False, ("redirect", "cmd_sum", "libsrvutil.so:srv_nosuch"), 1, "no such function in libsrvutil.so"),
    (False, ("restore", "cmd_sum"), 2, "no redirect of cmd_sum in process"),
    (False, ("lib", "unload", "fix.so"), 2, "no library fix.so loaded by patch-ctl"),
])
def test_refusals_leave_the_target_unharmed(srv, libs, preload, args, code, fragment):
    """NEW may be in any loaded library (libsrvutil.so the program loaded itself, fix.so `lib load` did);
    unknown names on either side are refused by name."""
    if preload:
        ok(patch_ctl("lib", "load", "-p", srv.pid, libs["fix"]))
    assert_one_line_error(patch_ctl(*args, "-p", srv.pid), code, fragment)
    if preload:
        assert [r["module"] for r in listed(srv)] == ["lib:fix.so"]
        ok(patch_ctl("lib", "unload", "-p", srv.pid, "fix.so"))
    unharmed(srv, libs["fix"])


@pytest.mark.parametrize("lib, code, fragment", [
    ("junk", 1, "dlopen failed in process"),  # dlerror's text: "file too short"
    ("unresolved", 1, "undefined symbol: missing_everywhere"),
])
def test_lib_load_reports_dlerror(srv, libs, lib, code, fragment):
    run = patch_ctl("lib", "load", "-p", srv.pid, libs[lib])
    assert_one_line_error(run, code, fragment)
    unharmed(srv, libs[lib])


@pytest.mark.parametrize("lib, code, fragment", [
    ("unresolved", 1, "undefined symbol: missing_everywhere"),  # dlopen fails: dlerror's text
    ("unknown", 1, "no_such_function: no such function in process"),  # loaded, then unloaded again
    ("notable", 2, "notable.so: no patch_replace table"),  # nothing of it runs in the target
])
def test_patch_library_refusals(srv, libs, lib, code, fragment):
    run = patch_ctl("apply", "-p", srv.pid, libs[lib])
    assert_one_line_error(run, code, fragment)
    unharmed(srv, libs[lib])


def test_patch_library_is_never_trusted(srv, libs, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    public = Ed25519PrivateKey.generate().public_key()
    (keys / "ours.pem").write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    run = patch_ctl("apply", "-p", srv.pid, "--trusted-keys", keys, libs["fix"])
    assert_one_line_error(run, 1, "carries no signature")
    unharmed(srv, libs["fix"])


@pytest.mark.parametrize("command, fault", [
    ("apply", "commit-write@2:kill"),  # one of two jumps written, patch-ctl killed
    ("revert", "revert-done:kill"),  # jumps put back, the library not yet dlclose'd
])
def test_killed_patch_ctl_is_finished_by_the_next(srv, libs, command, fault):
    """The record says what was under way: the next patch-ctl (`list`) reverts the redirects, dlcloses
    the library and unmaps, whatever step the killed one reached."""
    fix = libs["fix"]
    if command == "revert":
        ok(patch_ctl("apply", "-p", srv.pid, fix))
    args = ("apply", "-p", srv.pid, fix) if command == "apply" else ("revert", "-p", srv.pid, "fix")
    proc = subprocess.run(patch_ctl_argv(*args), capture_output=True, text=True, timeout=60,
                          env=dict(patch_ctl_env(), PATCH_CTL_FAULT=fault))
    assert proc.returncode == -9, proc.stderr
    run = ok(patch_ctl("list", "-p", srv.pid))
    assert "no patches" in run.stdout and "interrupted patch-ctl" in run.stderr
    unharmed(srv, fix)


def test_library_loaded_through_a_symlink_is_tracked_by_its_real_file(srv, libs, tmp_path):
    """Records name a library by the path /proc/PID/maps shows (its real file), so the in-use check holds
    whichever name it was loaded by."""
    link = tmp_path / "libfix-link.so"
    link.symlink_to(libs["fix"])
    ok(patch_ctl("lib", "load", "-p", srv.pid, link))
    ok(patch_ctl("redirect", "-p", srv.pid, "cmd_sum", "cmd_sum_v2"))
    assert srv.ask("SUM abc") == [SUM_V2]
    assert_one_line_error(patch_ctl("lib", "unload", "-p", srv.pid, "libfix-link.so"), 1, "in use")
    ok(patch_ctl("restore", "-p", srv.pid, "cmd_sum"))
    ok(patch_ctl("lib", "unload", "-p", srv.pid, "libfix-link.so"))
    unharmed(srv, libs["fix"])


@pytest.mark.parametrize("compiler, suffix", [("gcc", ".c"), ("g++", ".cpp")])
def test_header_compiles_cleanly_in_c_and_cxx(tmp_path, compiler, suffix):
    """The shipped header builds without a warning (ISO C forbids function pointers as void *), and its
    table is the section apply reads: 16-byte entries."""
    linkage = 'extern "C" ' if suffix == ".cpp" else ""
    src = tmp_path / f"fix{suffix}"
    src.write_text(f'#include "patch-replace.h"\n{linkage}int f_v2(int x) {{ return x + 1; }}\n'
                   f'{linkage}int g_v2(int x) {{ return x; }}\nPATCH_REPLACE(f, f_v2);\nPATCH_REPLACE(g, g_v2);\n')
    out = tmp_path / "fix.so"
    run = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fPIC", "-shared",
                          f"-I{INCLUDE}", "-o", str(out), str(src)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    section = subprocess.run(["readelf", "-SW", str(out)], capture_output=True, text=True, check=True).stdout
    [line] = [l for l in section.splitlines() if " patch_replace " in l]
    assert int(line.split()[-6], 16) == 32  # two entries of 16 bytes
