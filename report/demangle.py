"""C++ symbol names as people read them, via binutils' c++filt (one process per batch of names)."""
from __future__ import annotations

import shutil
import subprocess


def demangle(names) -> dict[str, str]:
    """mangled -> demangled for each Itanium-mangled name (`_Z...`) c++filt could read; others are left out."""
    mangled = sorted({n for n in names if n.startswith("_Z")})
    tool = shutil.which("c++filt")
    if not mangled or tool is None:
        return {}
    run = subprocess.run([tool], input="\n".join(mangled) + "\n", capture_output=True, text=True)
    if run.returncode != 0:
        return {}
    out = run.stdout.splitlines()
    return {m: d for m, d in zip(mangled, out) if d != m} if len(out) == len(mangled) else {}
