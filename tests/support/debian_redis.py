"""Debian's redis for the tests and figures of a real project's own LTO build (issue 13).

The source package comes from bookworm's deb-src (`apt-get source redis`; scripts/install-deps.sh adds the
deb-src entry), is unpacked once (Debian's patches applied) and built once the way it is deployed, all cached in
CACHE_ROOT/redis outside the checkout, so a fresh clone or CI reuses it. The version fetched first is kept (its
.dsc in CACHE/debs) so that a new Debian upload does not invalidate the cache; delete CACHE to move on.

redis 7.2 and later build with `-O3 -flto` by default: their Makefile adds `-flto=auto` to REDIS_CFLAGS and
`-O3 -flto` to REDIS_LDFLAGS when OPTIMIZATION is -O3 (the default). Bookworm's 7.0.15 predates that rule, so
BUILD_CMD passes the same flags; the allocator is Debian's jemalloc, as Debian's package links it.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.debian import CACHE_ROOT, apt_env, run

CACHE = CACHE_ROOT / "redis"
# redis 7.2's own -O3 -flto flags and nothing else: patch-build's compiler wrapper adds what it needs to its own
# builds (-ffunction-sections -fdata-sections, -Wl,--emit-relocs), so its links are laid out otherwise than the
# deployed one, as on a user's machine.
BUILD_CMD = ("make USE_SYSTEM_JEMALLOC=yes OPTIMIZATION=-O3 REDIS_CFLAGS='-flto=auto' REDIS_LDFLAGS='-O3 -flto=auto' "
             "redis-server")
TARGET = "src/redis-server"
# An upstream fix for it: BITCOUNT on a missing key with bad arguments answers an error, not 0
FIX = Path(__file__).resolve().parents[2] / "fixtures" / "build" / "redis-bitcount-args.patch"


@dataclass(frozen=True)
class RedisTree:
    version: str  # Debian package version, 7.0.15-1~deb12uN
    source: Path  # the unpacked source package, never built
    built: Path  # a copy of it built with BUILD_CMD: the deployed server is built/TARGET

    @property
    def server(self) -> Path:
        return self.built / TARGET


def _dsc(debs: Path) -> Path:
    found = sorted(debs.glob("redis_*.dsc"))
    if found:
        return found[-1]
    debs.mkdir(parents=True, exist_ok=True)
    try:
        run("apt-get", "source", "--download-only", "redis", cwd=debs)
    except RuntimeError:  # a stale package list names a version the mirror no longer has
        run("apt-get", "update", "-qq", env=apt_env())
        try:
            run("apt-get", "source", "--download-only", "redis", cwd=debs)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n(no deb-src entry for bookworm? scripts/install-deps.sh adds it)") from None
    return sorted(debs.glob("redis_*.dsc"))[-1]


def _replace(tree: Path, make) -> None:
    """Make `tree` with make(tmp) in a sibling directory, then move it in place: a tree is complete or absent."""
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    tmp.rename(tree)


def _build(source: Path, tmp: Path) -> None:
    run("cp", "-a", str(source), str(tmp))
    env = dict(os.environ, MAKEFLAGS=f"-j{os.cpu_count() or 2}")
    proc = subprocess.run(["sh", "-c", BUILD_CMD], cwd=tmp, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{BUILD_CMD} failed in {tmp}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def redis_tree() -> RedisTree:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dsc = _dsc(CACHE / "debs")
        version = dsc.stem.split("_", 1)[1]
        source = CACHE / f"redis-{version}"
        if not source.is_dir():
            _replace(source, lambda tmp: run("dpkg-source", "--no-check", "-x", str(dsc), str(tmp)))
        # a build is valid for one compiler: another gcc would make other code than patch-build's builds
        compiler = run("gcc", "--version").splitlines()[0]
        key = hashlib.sha256(f"{BUILD_CMD}\n{compiler}".encode()).hexdigest()[:12]
        built = CACHE / f"redis-{version}-built-{key}"
        if not (built / TARGET).is_file():
            shutil.rmtree(built, ignore_errors=True)
            _replace(built, lambda tmp: _build(source, tmp))
        return RedisTree(version, source, built)


if __name__ == "__main__":
    print(redis_tree())
