"""Fuzzing `patch-ctl info` and `patch-ctl apply` with mutants of a real patch module, against the running
fixture server (issue 9): every run ends with exit 0-3, one error line at most, no traceback, no hang, and
the server is left running, untraced, answering, and unpatched (what did apply is reverted).

Plain mutants fail their digest and must all be refused before the target is touched. Resealed mutants (the
digest recomputed after the mutation, as a forger would) reach the ELF, metadata, relocation and symbol
checks behind it; one that passes them all is applied and must revert cleanly. The code it holds may be
garbage then, so the server's INCR (the patched command) is only asked once the patch is gone.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loader"))

from patch_build.common.errors import InputError  # noqa: E402
from patch_build.kbuild.options import BuildOptions  # noqa: E402
from patch_build.kbuild.userspace import build_user_patch  # noqa: E402
from patch_build.patchformat import integrity  # noqa: E402
from livetarget import FIXTURE, Server  # noqa: E402
from support.fuzzing import Runner, check_outcome, describe, mutations  # noqa: E402

SEED = 9
PLAIN, RESEALED = 300, 100
PROG = "patch-ctl"


@pytest.fixture(scope="module")
def module_and_tree(tmp_path_factory) -> tuple[Path, Path]:
    """incr-fix.kpatch built by patch-build, and the built server tree it patches."""
    root = tmp_path_factory.mktemp("fuzz-module")
    src, deployed = root / "src", root / "deployed"
    shutil.copytree(FIXTURE, src)
    shutil.copytree(FIXTURE, deployed)
    subprocess.run(["make", "-s"], cwd=deployed, check=True, capture_output=True)
    scratch, saved = root / "tmp", tempfile.tempdir
    scratch.mkdir()
    tempfile.tempdir = str(scratch)
    try:
        result = build_user_patch(BuildOptions(patches=[FIXTURE / "incr-fix.patch"], srcdir=src, targets=["server"],
                                               outdir=root / "out", jobs=1,
                                               target_binaries=[deployed / "server"]))
    finally:
        tempfile.tempdir = saved
    return result.module, deployed


def server_problems(server: Server) -> list[str]:
    """What is wrong with the server after an apply attempt: stopped, traced, not answering, patched."""
    if server.proc.poll() is not None:
        return [f"the server exited ({server.proc.returncode})"]
    status = server.status()
    problems = []
    if status["State"][0] in "tT":
        problems.append(f"the server is stopped ({status['State']})")
    if status["TracerPid"] != "0":
        problems.append(f"the server is still traced by {status['TracerPid']}")
    try:
        if server.ask("PING", "SET fuzz ok", "GET fuzz") != ["PONG", "OK", "VALUE ok"]:
            problems.append("the server answers wrongly")
    except (OSError, ConnectionError) as e:
        problems.append(f"the server does not answer: {e}")
    return problems


def test_fuzz_module(module_and_tree, tmp_path):
    module, tree = module_and_tree
    original = module.read_bytes()
    server = Server(tree, 2)
    failures: list[str] = []
    outcomes: dict[str, Counter] = {"plain": Counter(), "resealed": Counter()}
    applied = 0
    try:
        with Runner("patch_build.loader.cli", PROG, timeout=20.0) as run:
            def attempt(batch: str, what: str, path: Path) -> int | None:
                """info and apply on one mutant; the apply's exit code (None: failed)."""
                nonlocal applied
                info = run(["info", str(path)])
                problems = check_outcome(info, PROG)
                if problems:
                    failures.append(describe(what, info, problems))
                result = run(["apply", "-p", str(server.pid), "--timeout", "5", str(path)])
                problems = check_outcome(result, PROG)
                outcomes[batch][result.kind] += 1
                if result.code == 0:
                    applied += 1
                    reverted = run(["revert", "-p", str(server.pid), "--all"])
                    if reverted.code != 0:
                        problems.append(f"revert after the apply: {reverted.kind}: {reverted.stderr[-300:]!r}")
                problems += server_problems(server)
                if not problems and server.patch_mappings():
                    problems.append("patch memory left mapped in the server")
                if not problems and server.ask("SET n 1", "INCR n") != ["OK", "VALUE 3"]:
                    problems.append("INCR is no longer the original code")  # buggy +2: nothing left patched
                if problems:
                    failures.append(describe(what, result, problems))
                return result.code

            path = tmp_path / "fix.kpatch"
            for what, data in mutations(original, SEED, PLAIN):
                path.write_bytes(data)
                code = attempt("plain", what, path)
                if code == 0 and data != original:
                    failures.append(f"{what}: applied although its digest no longer matches")
                if server.proc.poll() is not None:
                    break

            resealed = 0
            for what, data in mutations(original, SEED + 1, RESEALED):
                if server.proc.poll() is not None:
                    break
                path.write_bytes(data)
                try:
                    integrity.seal(path)
                except InputError:
                    continue  # no integrity record left to recompute: the plain batch covers these
                resealed += 1
                attempt("resealed", what + " (resealed)", path)
    finally:
        alive = server.proc.poll() is None
        server.stop()
    assert alive, "the server died during the fuzzing"
    assert not failures, f"{len(failures)} bad outcome(s):\n" + "\n".join(failures[:8])
    assert outcomes["plain"]["exit 2"] >= PLAIN * 0.9, outcomes  # refused as corrupt, target untouched
    # the resealed mutants reach the checks behind the digest: some refused (1), some malformed (2), some applied
    assert resealed >= RESEALED * 0.5 and applied, (resealed, applied, outcomes)
    assert outcomes["resealed"]["exit 1"] and outcomes["resealed"]["exit 2"], outcomes
