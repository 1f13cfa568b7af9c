"""patch-build installs the way Python tools install: a wheel whose packages all live under `patch_build.*`
(nothing named `report` or `templates` lands in site-packages), working from a clean virtual environment
outside the checkout (templates and linker scripts found as package data), and `pipx install`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "build"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH or venv of the test run leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)) and "/.venv/" not in p)
    env.update(extra)
    return env


def run(cmd: list, cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """A copy of the checkout: building a wheel writes build/ and *.egg-info beside the sources."""
    dest = tmp_path_factory.mktemp("src") / "patch-build"
    shutil.copytree(REPO, dest, ignore=NOT_SOURCE)
    return dest


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source_copy], cwd=out)
    (built,) = out.glob("patch_build-*.whl")
    return built


def test_wheel_installs_everything_under_one_namespace(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"patch_build", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    packages = {n.split("/")[1] for n in names if n.startswith("patch_build/")}
    assert packages == {"common", "elfcore", "patchformat", "diffobj", "linker", "report", "loader", "kbuild",
                        "templates", "go"}
    # package data: the module templates, the shipped headers and the linker scripts
    assert "patch_build/templates/kernel/include/kpatch-macros.h" in names
    assert any(n.startswith("patch_build/templates/report/") and n.endswith(".j2") for n in names)
    assert any(n.startswith("patch_build/linker/") and n.endswith(".lds") for n in names)
    assert "patch_build/go/agent/agent.go" in names and "patch_build/go/go.mod" in names  # what Go patches build with
    assert "patch_build/loader/load-kernel-patches.sh" in names  # the boot loader kernel patch packages ship


def test_wheel_builds_and_reads_a_patch_in_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp_path)
    bindir = venv / "bin"
    for prog in ("patch-build", "patch-diff", "patch-ctl", "patch-report"):
        assert run([bindir / prog, "--version"], cwd=tmp_path).stdout.strip() == f"{prog} {VERSION}"

    src = tmp_path / "cprog"
    shutil.copytree(FIXTURES / "cprog", src)
    run(["make", "-C", src, "-s"], cwd=tmp_path)
    env = clean_env(PATH=f"{bindir}{os.pathsep}{clean_env()['PATH']}")
    run([bindir / "patch-build", "-s", src, "-t", "prog", "-o", tmp_path / "out", FIXTURES / "cprog-fix.patch"],
        cwd=tmp_path, env=env)
    module = tmp_path / "out" / "cprog-fix.kpatch"
    info = run([bindir / "patch-ctl", "info", module], cwd=tmp_path, env=env).stdout
    assert "compute" in info and "greeting" in info
    assert "<html" in (tmp_path / "out" / "cprog-fix.report.html").read_text()
    # the installed code is what ran, not the checkout
    where = run([venv / "bin" / "python", "-c", "import patch_build.linker as m; print(m.__file__)"],
                cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where


def test_pipx_install(source_copy, tmp_path):
    pipx = shutil.which("pipx")
    assert pipx, "pipx is not installed: run scripts/install-deps.sh"
    env = clean_env(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"))
    run([pipx, "install", source_copy], cwd=tmp_path, env=env)
    for prog in ("patch-build", "patch-diff", "patch-ctl", "patch-report"):
        assert run([tmp_path / "bin" / prog, "--version"], cwd=tmp_path, env=env).stdout.strip() == f"{prog} {VERSION}"
    assert "Usage" in run([tmp_path / "bin" / "patch-ctl", "--help"], cwd=tmp_path, env=env).stdout
