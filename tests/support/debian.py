"""What the tests that fetch Debian packages share: the download cache outside the checkout and running apt."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

# $PATCH_BUILD_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/patch-build (`make clean-cache` removes it): a fresh clone
# or a CI run with a restored cache does not fetch again.
CACHE_ROOT = Path(os.environ.get("PATCH_BUILD_CACHE")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "patch-build")


def run(*cmd: str, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run `cmd`, its stdout; RuntimeError with the command and the end of its output when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def apt_env() -> dict:
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")
