"""What a patch build is asked to do and what it produced: the contract between the CLI and the builders.

`kbuild.cli` parses options into `BuildOptions` and calls `kbuild.userspace.build_user_patch` or, when
the source tree is a Linux tree, `kbuild.kernel.build_kernel_patch`; both return a `BuildResult` or raise
a `diffobj.errors.PatchBuildError` subclass (its `exit_code` is the command's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BuildOptions:
    patches: list[Path]
    srcdir: Path
    targets: list[str] = field(default_factory=list)  # -t: user: files relative to SRCDIR; kernel: vmlinux/modules
    name: str | None = None  # -n; default: first patch's stem, sanitised
    outdir: Path = Path(".")
    jobs: int = 0  # -j; 0: number of CPUs
    skip_cleanup: bool = False
    debug: bool = False  # -d: keep the scratch tree and print its path
    # user space
    build_cmd: str = "make"
    target_binaries: list[Path] = field(default_factory=list)  # --target-binary, one per target
    # kernel
    config: Path | None = None  # -c
    vmlinux: Path | None = None  # -v
    system_map: Path | None = None
    headers: Path | None = None
    non_replace: bool = False
    json_output: bool = False  # --json (issue 6): one summary line on stdout


@dataclass
class BuildResult:
    module: Path  # NAME.kpatch or NAME.ko
    report_json: Path
    name: str
    kind: str  # "user" | "kernel"
    diffs: list = field(default_factory=list)  # diffobj.diff.DiffResult per changed object
    extra_reports: list[Path] = field(default_factory=list)  # .md / .html renderings
    scratch: Path | None = None  # kept with -d
