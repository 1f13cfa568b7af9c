#!/usr/bin/env python3
"""`make demo`: the differ at work on a bundled fixture pair."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "diff" / "static_local_counter"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, text=True, **kw)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="patch-build-demo-") as tmp:
        work = Path(tmp)
        print("== the fix:")
        subprocess.run(["diff", "-u", FIXTURE / "orig.c", FIXTURE / "patched.c"])
        for name in ("orig", "patched"):
            run(["gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-c", FIXTURE / f"{name}.c",
                 "-o", work / f"{name}.o"], check=True)
        print("== diffing the two builds:")
        rc = run(["patch-diff", work / "orig.o", work / "patched.o", "-o", work / "out.o",
                  "--objname", "prog", "--report", work / "report.json"]).returncode
        if rc != 0:
            return rc
        print("== what the patch object holds:")
        run(["readelf", "-sW", work / "out.o"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
