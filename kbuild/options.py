"""What a patch build is asked to do and what it produced: the contract between the CLI and the builders.

`kbuild.cli` parses options into `BuildOptions` and calls `kbuild.userspace.build_user_patch` or, when
the source tree is a Linux tree, `kbuild.kernel.build_kernel_patch`; both return a `BuildResult` or raise
a `common.errors.PatchBuildError` subclass (its `exit_code` is the command's).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from patch_build.common.errors import InputError


class Progress(Protocol):
    """How a builder tells the CLI what it is doing (a rich display on a terminal, plain lines otherwise)."""

    def step(self, title: str, total: int | None = None) -> None:
        """A new step begins; `total` units of work when known (then `advance` is called per unit)."""

    def advance(self, detail: str = "") -> None:
        """One unit of the current step is done."""

    def note(self, text: str) -> None:
        """Something the user should see (a warning, where the scratch tree is kept)."""


class SilentProgress:
    def step(self, title: str, total: int | None = None) -> None:
        pass

    def advance(self, detail: str = "") -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class BuildOptions:
    patches: list[Path]
    srcdir: Path
    targets: list[str] = field(default_factory=list)  # -t: user: files relative to SRCDIR; kernel: vmlinux/modules
    name: str | None = None  # -n; default: first patch's stem, sanitised (kernel: livepatch_STEM)
    outdir: Path = Path(".")
    jobs: int = 0  # -j; 0: number of CPUs
    skip_cleanup: bool = False
    debug: bool = False  # -d: keep the scratch tree and print its path
    # user space
    lang: str | None = None  # --lang: c or go; None: go when SRCDIR has a go.mod
    build_cmd: str = "make"
    target_binaries: list[Path] = field(default_factory=list)  # --target-binary, one per target
    no_build_changes: bool = False  # --no-build-changes: refuse patches that change build-system files
    link_diff: bool = False  # --link-diff: diff the linked programs, not the objects (default for LTO builds)
    # kernel
    config: Path | None = None  # -c
    vmlinux: Path | None = None  # -v
    system_map: Path | None = None
    headers: Path | None = None
    non_replace: bool = False
    # --sign-key: user space, an Ed25519 private key (PEM) that seals NAME.kpatch; kernel, with --sign-cert,
    # the key scripts/sign-file signs NAME.ko with
    sign_key: Path | None = None
    sign_cert: Path | None = None  # --sign-cert
    json_output: bool = False  # --json (issue 6): one summary line on stdout
    only_explained: bool = False  # --only-explained: changed functions no hunk explains stay out of the module
    progress: Progress = field(default_factory=SilentProgress)


@dataclass
class BuildResult:
    module: Path  # NAME.kpatch or NAME.ko
    report_json: Path
    name: str
    kind: str  # "user" | "kernel"
    diffs: list = field(default_factory=list)  # per changed object: user kbuild.units.UnitDiff; kernel: DiffResult
    functions: list[str] = field(default_factory=list)  # replaced functions, as "objname:name"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step: original build, patched build, ...
    extra_reports: list[Path] = field(default_factory=list)  # .md / .html renderings
    scratch: Path | None = None  # kept with -d


def module_name(options: BuildOptions) -> str:
    """-n, else the first patch's stem, reduced to characters safe in file and symbol names."""
    raw = options.name or (options.patches[0].stem if options.patches else "patch")
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")
    if not name:
        raise InputError(f"module name {raw!r} has no usable characters; give one with -n")
    return name
