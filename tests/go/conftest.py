"""Fixtures of the Go tests: the counter server (fixtures/go/counter) built with Debian's Go toolchain, with
and without the agent and as another build; its fixes built with the real patch-build."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from patch_build.kbuild.gotool import cache_dir
from support.runs import Run

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "go"


def go_env(root: Path) -> dict:
    return dict(os.environ, GOPROXY="off", GOTOOLCHAIN="local", GOFLAGS="", GOPATH=str(root / "gopath"),
                GOCACHE=str(cache_dir() / "go-build"))


def tool(module: str, *args, timeout: float = 600, env: dict | None = None) -> Run:
    env = dict(os.environ, **(env or {}))
    env.pop("PATCH_BUILD_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", f"patch_build.{module}", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class GoTree:
    src: Path  # the module (what patch-build gets; never written by it)
    out: Path  # where the patches and reports go
    counter: Path  # with the agent: the deployed program
    noagent: Path  # built with -tags noagent
    other: Path  # the same sources, another build (-ldflags -X)

    def build(self, *patches: str, name: str | None = None, binary: Path | None = None) -> Run:
        args = ["-s", self.src, "-t", binary or self.counter, "-o", self.out]
        if name:
            args += ["-n", name]
        return tool("kbuild", *args, *(FIXTURES / p for p in patches))


@pytest.fixture(scope="session")
def go_tree(tmp_path_factory) -> GoTree:
    if shutil.which("go") is None:
        pytest.fail("the go command is missing (apt-get install golang: scripts/install-deps.sh)")
    root = tmp_path_factory.mktemp("go")
    src = root / "counter"
    shutil.copytree(FIXTURES / "counter", src)
    gomod = src / "go.mod"
    gomod.write_text(re.sub(r"=> \S+", f"=> {REPO / 'go'}", gomod.read_text()))
    env = go_env(root)
    tree = GoTree(src, root / "out", root / "counter.bin", root / "counter-noagent.bin", root / "counter-other.bin")
    for binary, flags in ((tree.counter, []), (tree.noagent, ["-tags", "noagent"]),
                          (tree.other, ["-ldflags=-X=main.build=other"])):
        subprocess.run(["go", "build", *flags, "-o", str(binary), "."], cwd=src, env=env, check=True,
                       capture_output=True)
    return tree


@pytest.fixture(scope="session")
def fixes(go_tree) -> dict[str, Path]:
    """fix.gopatch, and fix2.gopatch built on top of it."""
    out = {}
    for name, patches in (("fix", ["fix.patch"]), ("fix2", ["fix.patch", "fix2.patch"])):
        run = go_tree.build(*patches, name=name)
        assert run.returncode == 0, run.stderr
        out[name] = go_tree.out / f"{name}.gopatch"
        report = json.loads((go_tree.out / f"{name}.report.json").read_text())
        assert report["status"] == "built"
    return out
