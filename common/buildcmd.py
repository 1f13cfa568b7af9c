"""Running a build command (the project's own build in the scratch tree, kbuild for a kernel module)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from patch_build.common.errors import InputError

TAIL_LINES = 15
_DIAGNOSTIC = re.compile(r"(?:^|\s)(?:fatal )?error:|undefined reference|No rule to make target|not found")


class BuildFailed(InputError):
    """The project's build command failed (exit 2); `tail` holds the end of its output."""

    def __init__(self, message: str, tail: list[str], log: Path):
        super().__init__(message)
        self.tail = tail
        self.log = log


def build_environment(env: dict[str, str], jobs: int) -> dict[str, str]:
    """Pass -j to the build tools that take it from the environment (make, cmake --build)."""
    # A patch-build started from inside another make (a CI `make test`, say) must still run the project's
    # build as a top-level one: the outer make's level, flags and jobserver descriptors do not apply to it.
    out = {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    out["MAKEFLAGS"] = f"-j{jobs}"
    out["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs)
    out["LC_ALL"] = "C"  # diagnostics we search are English
    return out


def run_build(command: str, tree: Path, env: dict[str, str], log: Path, what: str) -> None:
    """Run `command` with `sh -c` in `tree`, output to `log`; BuildFailed names the first compiler error."""
    with open(log, "wb") as out:
        proc = subprocess.run(["sh", "-c", command], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return
    lines = [l.rstrip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    first_error = next((l.strip() for l in lines if _DIAGNOSTIC.search(l)), lines[-1].strip() if lines else "")
    first_error = first_error.replace(os.fspath(tree) + "/", "")
    raise BuildFailed(f"{what} failed (`{command}` exited {proc.returncode}): {first_error}",
                      lines[-TAIL_LINES:], log)
