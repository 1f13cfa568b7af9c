"""Fixtures of the kernel tests: Debian's 6.1 kernel (downloaded and prepared once, cached outside the checkout, see debian_kernel.py)
and `patch-build` run on its source tree against its headers and symbols."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.fspath(Path(__file__).parent))

from debian_kernel import KernelEnv, debug_vmlinux, kernel_env  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kernel"


@dataclass
class Built:
    returncode: int
    stderr: str
    module: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.module.is_file()


@pytest.fixture(scope="session")
def kenv() -> KernelEnv:
    return kernel_env()


@pytest.fixture(scope="session")
def vmlinux_dbg(kenv: KernelEnv) -> Path:
    """The vmlinux of Debian's linux-image-RELEASE-dbg (downloaded once, cached beside the tree)."""
    return debug_vmlinux(kenv)


@pytest.fixture(scope="session")
def patch_build(kenv: KernelEnv):
    """Run the real `patch-build` CLI on the cached tree: build(patch, outdir, *extra) -> Built. The symbols
    are the booted kernel's kallsyms unless `extra` gives -v VMLINUX."""

    def build(patch: str, outdir: Path, *extra: str) -> Built:
        name = extra[extra.index("-n") + 1] if "-n" in extra else "livepatch_" + Path(patch).stem.replace("-", "_")
        symbols = [] if "-v" in extra else ["--system-map", os.fspath(kenv.kallsyms)]
        proc = subprocess.run([sys.executable, "-m", "kbuild", "-s", os.fspath(kenv.source), *symbols,
                               "--headers", os.fspath(kenv.headers),
                               "-o", os.fspath(outdir), *extra, os.fspath(FIXTURES / patch)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return Built(proc.returncode, proc.stderr, outdir / f"{name}.ko")

    return build
