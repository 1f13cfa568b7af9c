"""Fixtures of the kernel tests, on each of Debian 12's kernel lines (6.1, 6.12; debian_kernel.py downloads and
prepares each once, cached outside the checkout): `kenv` is parametrised by line, so every kernel test runs on
both, and the module-scoped fixtures that boot a VM boot once per line. One line alone: `-k 6.12`, or
`-k "not 6.12"` for 6.1.

`patch_build` runs patch-build on the line's tree against its headers and symbols. A fixture patch that
does not apply to one line's sources has a version for it in fixtures/kernel/LINE/ (same name, same effect).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.fspath(Path(__file__).parent))

from debian_kernel import LINES, KernelEnv, debug_vmlinux, kernel_env  # noqa: E402

from patch_build.diffobj.struct_sizes import StructSizes  # noqa: E402
from patch_build.common.buildcmd import build_environment  # noqa: E402
from patch_build.kbuild.struct_sizes import struct_sizes  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kernel"


@dataclass
class Built:
    returncode: int
    stderr: str
    module: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.module.is_file()


def fixture_patch(kenv: KernelEnv, patch: str) -> Path:
    """The fixture patch for the line: its own version if the sources differ there, else the common one."""
    own = FIXTURES / kenv.line / patch
    return own if own.is_file() else FIXTURES / patch


@pytest.fixture(scope="session", params=sorted(LINES, key=lambda n: tuple(map(int, n.split(".")))))
def kenv(request) -> KernelEnv:
    return kernel_env(request.param)


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
        proc = subprocess.run([sys.executable, "-m", "patch_build.kbuild", "-s", os.fspath(kenv.source), *symbols,
                               "--headers", os.fspath(kenv.headers),
                               "-o", os.fspath(outdir), *extra, os.fspath(fixture_patch(kenv, patch))],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return Built(proc.returncode, proc.stderr, outdir / f"{name}.ko")

    return build


@pytest.fixture(scope="session")
def kernel_struct_sizes(kenv: KernelEnv, tmp_path_factory) -> StructSizes:
    """The special-section struct sizes of the line's tree, as patch-build measures them (kept in the tree)."""
    return struct_sizes(kenv.source, build_environment(dict(os.environ), os.cpu_count() or 1), os.cpu_count() or 1,
                        tmp_path_factory.mktemp("struct-sizes"))
