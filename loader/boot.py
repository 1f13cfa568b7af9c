"""Kernel patches at boot (issue 15): the installed kernel patches of the running kernel, loaded as
kpatch.service loads kpatch's, by one loader wherever it runs.

That loader is a POSIX shell script, `load-kernel-patches` (LOADER), not Python: it must also run in an
initramfs, where busybox is all there is. It reads the store's manifest of the running release
(`loader.store.kernel_manifest`), checks each module's SHA-256 and `insmod`s it, in the manifest's order; a
patch not intact or refused by the kernel is logged and left out, never stopping the others. `patch-ctl boot`
runs it; a kernel patch's Debian package ships a copy that its systemd unit and its postinst run
(kbuild.package). Contract: docs/design.md ("Kernel patches at boot").
"""
from __future__ import annotations

import subprocess
from importlib.resources import as_file, files
from pathlib import Path

LOADER = "load-kernel-patches"


def _loader():
    return files("patch_build.loader").joinpath(f"{LOADER}.sh")


def loader_script() -> bytes:
    """The loader's text (package data), as packages ship it."""
    return _loader().read_bytes()


def load_kernel_patches(store: Path, only: str | None = None) -> int:
    """Run the loader on `store` for the running kernel (only the patch `only`, when given); its exit code.
    Its lines go to this process's stdout and stderr."""
    with as_file(_loader()) as script:
        argv = ["sh", str(script), "--store", str(store)] + (["--only", only] if only else [])
        return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
