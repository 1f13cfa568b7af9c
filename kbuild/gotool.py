"""Running the Go toolchain for a patch build: its environment (no module proxy, no toolchain download, the
build cache outside the checkout), the deployed binary's build info (`go version -m`) turned back into the
flags it was built with, `go list`, and builds that also print the compiler's listing of the module's code.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from patch_build.common.errors import InputError, Refused
from patch_build.common.buildcmd import BuildFailed, TAIL_LINES

# Build settings of `go version -m` that are flags of `go build`, and those that are environment variables.
_FLAG_SETTINGS = ("-asmflags", "-compiler", "-gcflags", "-ldflags", "-tags", "-trimpath", "-buildmode")
_ENV_SETTINGS = ("CGO_ENABLED", "CGO_CFLAGS", "CGO_CPPFLAGS", "CGO_CXXFLAGS", "CGO_LDFLAGS", "GOARCH", "GOOS",
                 "GOAMD64", "GOEXPERIMENT")


def cache_dir() -> Path:
    return Path(os.environ.get("PATCH_BUILD_CACHE") or Path.home() / ".cache" / "patch-build")


def go_environment(scratch: Path) -> dict[str, str]:
    """The go command's environment: only the standard library and what the user's module cache already
    holds (GOPROXY=off: where the program's dependencies were fetched when it was built; read only), the
    local toolchain only, the build cache under patch-build's cache directory."""
    env = dict(os.environ)
    try:
        modcache = subprocess.run(["go", "env", "GOMODCACHE"], env=env, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        modcache = ""  # toolchain_version says so
    env.update(GOPROXY="off", GOTOOLCHAIN="local", GOFLAGS="", GOWORK="off", GO111MODULE="on",
               GOCACHE=os.fspath(cache_dir() / "go-build"), GOPATH=os.fspath(scratch / "gopath"), LC_ALL="C")
    env["GOMODCACHE"] = modcache or os.fspath(cache_dir() / "go-mod")
    return env


@dataclass
class BuildInfo:
    """What `go version -m BINARY` says the deployed program was built from and with."""

    go_version: str
    main_package: str
    main_module: str
    flags: dict[str, str] = field(default_factory=dict)  # -gcflags, -ldflags, -tags, -trimpath, ...
    env: dict[str, str] = field(default_factory=dict)  # CGO_ENABLED, GOARCH, ...

    def build_args(self, plugin: bool = False) -> list[str]:
        """The flags of `go build` that make the same program (or, for a plugin, code that links with it:
        no stripping, which only removes the symbols we find functions by)."""
        args = []
        for name in _FLAG_SETTINGS:
            value = self.flags.get(name)
            if value is None or name in ("-compiler", "-buildmode"):
                continue
            if name == "-trimpath":
                if value == "true":
                    args.append("-trimpath")
                continue
            if name == "-ldflags" and plugin:
                value = " ".join(w for w in shlex.split(value) if w not in ("-s", "-w"))
            args.append(f"{name}={value}")
        return args

    def listing_flag(self, pattern: str) -> str:
        """-gcflags for `pattern`'s packages: the deployed build's own (when they applied to every package)
        and -S, the compiler's listing."""
        own = self.flags.get("-gcflags", "")
        head, sep, rest = own.partition("=")
        flags = rest if sep and head == "all" else ""
        return f"-gcflags={pattern}={flags} -S".replace("= ", "=")


def run_go(args: list[str], cwd: Path, env: dict[str, str], what: str,
           log: Path | None = None) -> subprocess.CompletedProcess:
    """Run `go ARGS` (its output also in `log`). A failure is BuildFailed (exit 2) with the end of the output."""
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                          stdin=subprocess.DEVNULL)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("\t")]
        first = next((l for l in lines if not l.startswith("#")), lines[-1] if lines else "go failed")
        raise BuildFailed(f"{what} failed: {first.strip()}", proc.stderr.splitlines()[-TAIL_LINES:],
                          log or Path(os.devnull))
    return proc


def toolchain_version(env: dict[str, str]) -> str:
    try:
        proc = subprocess.run(["go", "env", "GOVERSION"], env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise InputError("no Go toolchain: the go command is not on PATH (apt-get install golang)") from None
    return proc.stdout.strip()


def read_build_info(binary: Path, env: dict[str, str]) -> BuildInfo:
    proc = subprocess.run(["go", "version", "-m", os.fspath(binary)], env=env, capture_output=True, text=True,
                          errors="replace")
    if proc.returncode != 0 or ": go" not in proc.stdout.split("\n", 1)[0]:
        raise InputError(f"{binary}: not a Go program with build info (`go version -m` cannot read it)")
    lines = proc.stdout.splitlines()
    info = BuildInfo(go_version=lines[0].split(": ", 1)[1].strip(), main_package="", main_module="")
    for line in lines[1:]:
        parts = line.strip().split("\t")
        if parts[0] == "path" and len(parts) > 1:
            info.main_package = parts[1]
        elif parts[0] == "mod" and len(parts) > 1:
            info.main_module = parts[1]
        elif parts[0] == "build" and len(parts) > 1:
            key, _, value = parts[1].partition("=")
            if key in _FLAG_SETTINGS:
                info.flags[key] = value
            elif key in _ENV_SETTINGS:
                info.env[key] = value
    if not info.main_package:
        raise InputError(f"{binary}: its build info names no main package")
    if info.flags.get("-buildmode", "exe") not in ("exe", "default"):
        raise Refused([(binary.name, f"built with -buildmode={info.flags['-buildmode']}: only programs "
                                     "(-buildmode=exe) can load a fix")])
    return info


def go_list(pattern: str, cwd: Path, env: dict[str, str], extra: list[str] = ()) -> list[dict]:
    """`go list -json` of the packages `pattern` names (with the build's own flags in `extra`)."""
    out = run_go(["list", "-json", *extra, pattern], cwd, env, f"go list {pattern}").stdout
    decoder, at, packages = json.JSONDecoder(), 0, []
    while at < len(out):
        while at < len(out) and out[at].isspace():
            at += 1
        if at >= len(out):
            break
        pkg, at = decoder.raw_decode(out, at)
        packages.append(pkg)
    return packages
