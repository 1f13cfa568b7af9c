"""An empty system for dpkg (`dpkg --root`), its maintainer scripts running on the host (as
`--force-script-chrootless` runs them, with DPKG_ROOT set) with the patch-ctl of this checkout on PATH."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from patch_build.loader.store import Store


class DpkgRoot:
    def __init__(self, base: Path):
        self.root = base / "root"
        (self.root / "var/lib/dpkg/info").mkdir(parents=True)
        (self.root / "var/lib/dpkg/updates").mkdir()
        (self.root / "var/lib/dpkg/status").touch()
        bindir = base / "bin"
        bindir.mkdir()
        (bindir / "patch-ctl").write_text(f'#!/bin/sh\nexec {sys.executable} -m patch_build.loader "$@"\n')
        (bindir / "patch-ctl").chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        self.env.pop("PATCH_BUILD_STORE", None)  # the scripts then use $DPKG_ROOT/var/lib/patch-build
        self.store = Store(self.root / "var/lib/patch-build")

    def dpkg(self, *args) -> str:
        proc = subprocess.run(["dpkg", f"--root={self.root}", "--force-script-chrootless", *map(str, args)],
                              capture_output=True, text=True, env=self.env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def status(self, package: str) -> str:
        proc = subprocess.run(["dpkg-query", f"--admindir={self.root}/var/lib/dpkg", "-W", "-f=${Status}", package],
                              capture_output=True, text=True)
        return proc.stdout
