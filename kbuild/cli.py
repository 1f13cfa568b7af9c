"""`patch-build`: build a live patch module from fix.patch files and a source tree.

A Linux source tree (SRCDIR) gets a kernel livepatch module (kbuild.kernel); any other tree a user-space
NAME.kpatch (kbuild.userspace).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from patch_build.common.buildcmd import BuildFailed
from patch_build.common.errors import InputError, PatchBuildError
from patch_build.common.messages import internal_error_message
from patch_build.diffobj.console import command_app, entry_point, guarded
from patch_build.kbuild.options import BuildOptions, BuildResult
from patch_build.kbuild.package import build_deb, check_version, maintainer, package_epoch, require_dpkg_deb
from patch_build.report.summary import build_summary

app = command_app(__doc__, add_completion=True)
PROG = "patch-build"


def is_kernel_tree(srcdir: Path) -> bool:
    makefile = srcdir / "Makefile"
    if not ((srcdir / "Kbuild").is_file() and (srcdir / "arch" / "x86").is_dir() and makefile.is_file()):
        return False
    with open(makefile, errors="replace") as f:
        return any(line.startswith("VERSION =") for line, _ in zip(f, range(20)))


def build(options: BuildOptions) -> BuildResult:
    """Dispatch to the kernel, the Go or the user-space (C/C++) builder."""
    from patch_build.kbuild.golang import build_go_patch, is_go_module
    if options.lang == "go" or (options.lang is None and is_go_module(options.srcdir)):
        return build_go_patch(options)
    if options.srcdir.is_dir() and is_kernel_tree(options.srcdir):
        from patch_build.kbuild.kernel import build_kernel_patch
        return build_kernel_patch(options)
    from patch_build.kbuild.userspace import build_user_patch
    return build_user_patch(options)


class PlainProgress:
    """One line per step on stderr, for logs and pipes."""

    def step(self, title: str, total: int | None = None) -> None:
        print(f"{PROG}: {title}", file=sys.stderr, flush=True)

    def advance(self, detail: str = "") -> None:
        if detail:
            print(f"{PROG}:   {detail}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    def close(self, ok: bool = True) -> None:
        pass


class RichProgress:
    """A live spinner / bar per step on a terminal (stderr)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                                  BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=Console(stderr=True), transient=False)
        self._progress.start()
        self._task = None
        self._closed = False

    def _finish_task(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.total or 1, completed=task.total or 1)

    def step(self, title: str, total: int | None = None) -> None:
        self._finish_task()
        self._task = self._progress.add_task(title, total=total)

    def advance(self, detail: str = "") -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def note(self, text: str) -> None:
        self._progress.console.print(f"{PROG}: {text}", highlight=False, markup=False)

    def close(self, ok: bool = True) -> None:
        """Stop the display; a failed step is left unticked."""
        if self._closed:
            return
        self._closed = True
        if ok:
            self._finish_task()
        self._progress.stop()


def _check_package(package: str | None, version: str | None, patches: list[Path]) -> int | None:
    """Bad packaging options are refused before the build, not after it; the package's date when packaging."""
    with guarded(PROG):
        if package is None:
            if version is not None:
                raise InputError("--package-version needs --package deb")
            return None
        if package != "deb":
            raise InputError(f"--package {package}: unknown package format (deb is the one supported)")
        if version is not None:
            check_version(version)
        require_dpkg_deb()
        maintainer()
        return package_epoch([p for p in patches if p.is_file()])  # a missing one fails the build itself


@app.command()
def main(
    patches: List[Path] = typer.Argument(..., metavar="PATCH",
                                         help="fix.patch files, applied in order (patch -p1)"),
    srcdir: Path = typer.Option(Path("."), "-s", "--srcdir", help="pristine source tree (never modified)"),
    target: List[str] = typer.Option([], "-t", "--target",
                                     help="file the build produces to patch, relative to SRCDIR (repeatable)"),
    target_binary: List[Path] = typer.Option([], "--target-binary",
                                             help="the deployed binary, one per TARGET (default: SRCDIR/TARGET)"),
    lang: Optional[str] = typer.Option(None, "--lang", metavar="c|go",
                                       help="the program's language (default: go when SRCDIR has a go.mod, else c)"),
    build_cmd: str = typer.Option("make", "--build-cmd", help="how the project builds (run with sh -c)"),
    no_build_changes: bool = typer.Option(False, "--no-build-changes",
                                          help="refuse patches that change the build system (Makefile, ...)"),
    link_diff: bool = typer.Option(False, "--link-diff",
                                   help="diff the linked programs, not the objects: sees code inlined across units "
                                        "(the default for LTO builds)"),
    name: Optional[str] = typer.Option(None, "-n", "--name",
                                       help="module name (default: first patch's stem; kernel: livepatch_STEM)"),
    outdir: Path = typer.Option(Path("."), "-o", "--outdir", help="where NAME.kpatch / NAME.ko and the report go"),
    jobs: int = typer.Option(0, "-j", "--jobs", min=0, help="parallel jobs (default: number of CPUs)"),
    skip_cleanup: bool = typer.Option(False, "--skip-cleanup", help="keep the scratch tree"),
    debug: bool = typer.Option(False, "-d", "--debug", help="keep the scratch tree, print its path and tracebacks"),
    config: Optional[Path] = typer.Option(None, "-c", "--config", help="kernel: the running kernel's .config"),
    vmlinux: Optional[Path] = typer.Option(None, "-v", "--vmlinux", help="kernel: the running kernel's vmlinux"),
    system_map: Optional[Path] = typer.Option(None, "--system-map", help="kernel: the running kernel's System.map"),
    headers: Optional[Path] = typer.Option(None, "--headers", help="kernel: the running kernel's headers tree"),
    non_replace: bool = typer.Option(False, "--non-replace", help="kernel: do not replace earlier livepatches"),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", metavar="KEY.pem",
                                            help="sign the module: user space, an Ed25519 private key; kernel, the "
                                                 "key of --sign-cert (as scripts/sign-file)"),
    sign_cert: Optional[Path] = typer.Option(None, "--sign-cert", help="kernel: the X.509 certificate of --sign-key"),
    json_output: bool = typer.Option(False, "--json", help="print a one-line JSON summary on stdout"),
    only_explained: bool = typer.Option(False, "--only-explained",
                                        help="leave out of the module the changed functions no patch hunk explains "
                                             "(generated files, timestamps); the report lists them"),
    package: Optional[str] = typer.Option(None, "--package", metavar="deb",
                                          help="also wrap the module and its reports in a Debian package "
                                               "(OUTDIR/patch-build-NAME_VERSION_amd64.deb)"),
    package_version: Optional[str] = typer.Option(None, "--package-version",
                                                  help="the package's version (default: 0+ the module's "
                                                       "SHA-256 prefix)"),
) -> None:
    """Build a live patch module from PATCH files.

    Exit codes: 0 built, 1 refused (unsupported change, deployed binary differs), 2 bad input (missing tree,
    patch does not apply, build failure), 3 no functional change, 4 internal error (a bug of patch-build).
    """
    if debug:
        os.environ["PATCH_BUILD_DEBUG"] = "1"
    with guarded(PROG):
        if lang not in (None, "c", "go"):
            raise InputError(f"--lang {lang}: unknown language (c or go)")
        from patch_build.kbuild.golang import is_go_module
        if package is not None and (lang == "go" or (lang is None and is_go_module(srcdir))):
            raise InputError("--package: Go patches (.gopatch) are not packaged (the store takes .kpatch and .ko)")
    epoch = _check_package(package, package_version, patches)
    progress = RichProgress() if sys.stderr.isatty() else PlainProgress()
    options = BuildOptions(patches=patches, srcdir=srcdir, targets=target, name=name, outdir=outdir, jobs=jobs,
                           skip_cleanup=skip_cleanup, debug=debug, lang=lang, build_cmd=build_cmd,
                           target_binaries=target_binary,
                           no_build_changes=no_build_changes, link_diff=link_diff,
                           config=config, vmlinux=vmlinux, system_map=system_map, headers=headers,
                           non_replace=non_replace, sign_key=sign_key, sign_cert=sign_cert, json_output=json_output,
                           only_explained=only_explained, progress=progress)
    failure = None
    started = time.time()  # --json: reports written from now on are this build's
    try:
        with guarded(PROG):
            try:
                result = build(options)
                deb = build_deb(result, outdir, epoch, package_version) if package else None
            except Exception as e:
                failure = str(e) if isinstance(e, PatchBuildError) else internal_error_message(e)
                progress.close(ok=False)
                if isinstance(e, BuildFailed):  # the end of the build log, above the one-line error
                    for line in e.tail:
                        print(f"  | {line}", file=sys.stderr)
                raise
            finally:
                progress.close()
    except typer.Exit as e:
        if json_output:
            print(build_summary(e.exit_code, outdir=outdir, since=started, message=failure))
        raise
    print(f"{PROG}: wrote {result.module} ({len(result.functions)} function(s): "
          f"{', '.join(result.functions)}) and {result.report_json}", file=sys.stderr)
    if deb:
        print(f"{PROG}: wrote {deb}", file=sys.stderr)
    if json_output:
        print(build_summary(0, outdir=outdir, name=result.name, module=result.module))


main_entry = entry_point(app, PROG)
