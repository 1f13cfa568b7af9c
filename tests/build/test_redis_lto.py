"""A real project's own LTO build (issue 13): Debian bookworm's redis, from its source package (fetched, unpacked
and built once by tests/support/debian_redis.py, cached outside the checkout), built with plain `make` and
`-O3 -flto` as redis 7.2 and later build by default (patch-build's own builds add the section flags they need, so
their links are laid out otherwise than the deployed one), and fixed live with an upstream fix: the same process,
its keys and its client's connection kept, the fix visible to that client, then reverted. patch-ctl once refused
the module ("undefined symbol .text"): the strings bitcountCommand uses lay among other functions' jump tables,
which the module carried with entries read as pointing at code no piece covered; jump tables are pieces of their
own now (tests/build/test_lto.py's switchlto covers one a fix changes)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import redis as redis_client
from support.debian_redis import BUILD_CMD, FIX, TARGET, redis_tree

pytestmark = pytest.mark.slow  # three LTO builds of redis the first time (one cached), two after: minutes


def _patch_ctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patch_build.loader", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int) -> redis_client.Redis:
    client = redis_client.Redis(host="127.0.0.1", port=port, single_connection_client=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return client
        except redis_client.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _bitcount_missing(client) -> int | str:
    """BITCOUNT of a missing key with a start but no end: 0 before the fix, a syntax error after it."""
    try:
        return client.execute_command("BITCOUNT", "no-such-key", "0")
    except redis_client.ResponseError as e:
        return str(e)


@pytest.fixture(scope="module")
def redis_build(tmp_path_factory):
    """patch-build on redis's LTO build, once for the tests of this file: (run, module, tree)."""
    tmp_path = tmp_path_factory.mktemp("redis-lto")
    tree = redis_tree()
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("PATCH_BUILD_DEBUG", None)
    run = subprocess.run([sys.executable, "-m", "patch_build.kbuild", "-s", str(tree.built), "-t", TARGET,
                          "--build-cmd", BUILD_CMD, "--only-explained", "-o", str(out), str(FIX)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    return run, out / "redis-bitcount-args.kpatch", tree


def test_redis_lto_patch_builds(redis_build):
    run, module, _ = redis_build
    assert run.returncode == 0, run.stderr[-5000:]
    assert re.search(r"LTO build: \d+ of \d+ compiled units use link-time optimisation \(-flto=auto\); their "
                     r"objects hold IR only: diffing the linked programs \(link-diff\)", run.stderr), run.stderr
    assert re.search(r"function\(s\): [^)]*redis-server:bitcountCommand\b", run.stderr), run.stderr
    assert module.is_file()


def test_redis_lto_fixed_live(redis_build, tmp_path):
    run, module, tree = redis_build
    assert run.returncode == 0 and module.is_file()  # test_redis_lto_patch_builds says why not

    port = _free_port()
    server = subprocess.Popen([tree.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--logfile", str(tmp_path / "redis.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = _connect(port)
        client.set("kept", "set before the fix")
        client.set("bits", "foobar")
        client.rpush("queue", *range(1000))
        assert _bitcount_missing(client) == 0  # the bug: bad arguments answered with 0

        apply = _patch_ctl("apply", "-p", server.pid, module)
        assert apply.returncode == 0, apply.stderr
        assert _bitcount_missing(client) == "syntax error"  # the fix, seen by the same connection
        assert client.info("server")["process_id"] == server.pid
        assert client.get("kept") == b"set before the fix" and client.llen("queue") == 1000
        assert client.bitcount("bits") == 26 and client.bitcount("bits", 1, 1) == 6  # BITCOUNT still counts
        assert client.execute_command("BITCOUNT", "no-such-key", "0", "-1") == 0

        revert = _patch_ctl("revert", "-p", server.pid, "redis-bitcount-args")
        assert revert.returncode == 0, revert.stderr
        assert _bitcount_missing(client) == 0
        assert client.get("kept") == b"set before the fix" and client.lrange("queue", -1, -1) == [b"999"]
        assert server.poll() is None
    finally:
        server.kill()
        server.wait()
