"""A small kernel-module-shaped object for the store and package tests: a real x86-64 ELF relocatable
compiled by gcc with a `.modinfo` section (name, vermagic), which is all the store reads of a `.ko`.
Building a real livepatch `.ko` needs a kernel tree (tests/kernel)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def kernel_module(path: Path, name: str, release: str, body: str = "return 0;") -> Path:
    """Compile `path` (NAME.ko) for kernel `release`; `body` makes modules of one name differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".c")
    source.write_text(
        'static const char modinfo[] __attribute__((section(".modinfo"), used)) =\n'
        f'    "vermagic={release} SMP preempt mod_unload modversions \\0name={name}";\n'
        f"int {name}_init(void) {{ {body} }}\n")
    subprocess.run(["gcc", "-c", "-O2", str(source), "-o", str(path)], check=True, capture_output=True)
    return path
