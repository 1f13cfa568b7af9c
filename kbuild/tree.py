"""The scratch source tree: a copy of SRCDIR without build products, the patches (what they touch, applying them)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from patch_build.common.errors import InputError
from patch_build.elfcore.constants import ET_REL
from patch_build.elfcore.headers import E_TYPE_END, elf_type
from patch_build.report.patches import touched_files

# Build products a copied tree must not carry: the scratch build is configured and built by us from scratch,
# with our compiler wrappers, never from a cache that names the real compilers or SRCDIR's paths.
_CACHE_FILES = {"CMakeCache.txt"}
_CACHE_DIRS = {"CMakeFiles"}


def _is_object(path: Path) -> bool:
    """An ELF relocatable object: removing those is enough to make any build recompile every unit (archives,
    libraries and programs depend on them), while prebuilt libraries a project ships stay."""
    try:
        with open(path, "rb") as f:
            head = f.read(E_TYPE_END)
    except OSError:
        return False
    return elf_type(head) == ET_REL


def copy_tree(srcdir: Path, dest: Path) -> None:
    """Copy SRCDIR to `dest` (symlinks kept, times preserved), then remove objects and CMake caches from the
    copy so that the original build there compiles every unit through the wrapper."""
    proc = subprocess.run(["cp", "-a", "--", os.fspath(srcdir), os.fspath(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "cp failed"
        raise InputError(f"cannot copy {srcdir}: {why}")
    for root, dirs, files in os.walk(dest):
        for d in [d for d in dirs if d in _CACHE_DIRS]:
            shutil.rmtree(os.path.join(root, d))
            dirs.remove(d)
        dirs[:] = [d for d in dirs if d not in (".git", ".hg", ".svn")]
        for name in files:
            path = Path(root, name)
            if path.is_symlink():
                continue
            if name in _CACHE_FILES or _is_object(path):
                path.unlink()


# Files a build system runs (make, CMake, autotools, meson, SCons, ninja, kbuild): a patch changing one runs
# its code during patch-build, as whoever runs patch-build (issue 9).
_BUILD_FILE_NAMES = {"Makefile", "makefile", "GNUmakefile", "Kbuild", "Kconfig", "CMakeLists.txt", "configure",
                     "configure.ac", "configure.in", "aclocal.m4", "autogen.sh", "meson.build", "meson_options.txt",
                     "meson.options", "SConstruct", "SConscript", "build.ninja"}
_BUILD_FILE_PREFIXES = ("Makefile.", "Kbuild.", "Kconfig.")  # Makefile.am, Makefile.in, ...
_BUILD_FILE_SUFFIXES = (".mk", ".cmake", ".m4", ".am", ".ninja")


def is_build_file(path: str) -> bool:
    name = os.path.basename(path)
    return name in _BUILD_FILE_NAMES or name.startswith(_BUILD_FILE_PREFIXES) or name.endswith(_BUILD_FILE_SUFFIXES)


def build_files(patches: list[Path], build_cmd: str = "") -> list[str]:
    """The build-system files the patches change, in patch order: by name, or named by the build command
    (`--build-cmd ./build.sh`)."""
    try:
        named = {os.path.normpath(word) for word in shlex.split(build_cmd)}
    except ValueError:  # unbalanced quotes: sh -c will say so when it runs
        named = set()
    found = []
    for patch in patches:
        for path in touched_files(patch):
            if (is_build_file(path) or os.path.normpath(path) in named) and path not in found:
                found.append(path)
    return found


_HUNK_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_PATCHING = re.compile(r"^(?:patching|checking) file '?(.+?)'?$")


def _failure(patch: Path, output: str) -> str:
    """One line saying where `patch --dry-run` failed: the first failed hunk and its file, or patch's reason."""
    current = None
    for line in output.splitlines():
        m = _PATCHING.match(line)
        if m:
            current = m.group(1)
            continue
        m = _HUNK_FAILED.match(line)
        if m:
            return f"{patch.name} does not apply: hunk #{m.group(1)} of {current} FAILED at line {m.group(2)}"
        if "can't find file to patch" in line:
            return f"{patch.name} does not apply: a file it patches does not exist (patch -p1)"
        if "Reversed (or previously applied) patch detected" in line:
            return f"{patch.name} does not apply: {current} is already patched (reversed or previously applied)"
        if "Only garbage was found" in line or "malformed patch" in line:
            return f"{patch.name} is not a patch: {line.strip()}"
    lines = [l for l in output.splitlines() if l.strip()]
    return f"{patch.name} does not apply: {lines[-1] if lines else 'patch failed'}"


def _patch_command(patch: Path, tree: Path) -> list[str]:
    return ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d", os.fspath(tree),
            "-i", os.fspath(patch.resolve())]


def check_patch(patch: Path, tree: Path) -> None:
    """`patch --dry-run` (it writes nothing to `tree`); InputError (exit 2) names the patch and the failing
    hunk when it does not apply."""
    dry = subprocess.run([*_patch_command(patch, tree), "--dry-run"], capture_output=True, text=True)
    if dry.returncode != 0:
        raise InputError(_failure(patch, dry.stdout + dry.stderr))


def apply_patch(patch: Path, tree: Path) -> list[str]:
    """Apply `patch` with `patch -p1` after a dry run; return the files it touched."""
    check_patch(patch, tree)
    done = subprocess.run(_patch_command(patch, tree), capture_output=True, text=True)
    if done.returncode != 0:
        raise InputError(_failure(patch, done.stdout + done.stderr))
    return [m.group(1) for m in map(_PATCHING.match, done.stdout.splitlines()) if m]


def revert_patches(applied: list[Path], tree: Path) -> None:
    """Take back the patches applied to `tree` (`patch -R`), the last first."""
    for patch in reversed(applied):
        proc = subprocess.run(["patch", "-p1", "-R", "--batch", "--no-backup-if-mismatch", "-d", os.fspath(tree),
                               "-i", os.fspath(patch.resolve())], capture_output=True, text=True)
        if proc.returncode:
            raise InputError(f"could not revert {patch.name} in {tree}: {proc.stdout.strip()[-300:]}")


def in_scratch(options, name: str, build: Callable[[Path], object]):
    """Run `build(scratch)` in a fresh scratch directory, kept with -d/--skip-cleanup (and its path said),
    removed otherwise, whatever happens. Returns build's BuildResult with `scratch` set when kept."""
    scratch = Path(tempfile.mkdtemp(prefix=f"patch-build-{name}-"))
    keep = options.debug or options.skip_cleanup
    try:
        result = build(scratch)
        result.scratch = scratch if keep else None
        return result
    finally:
        if keep:
            options.progress.note(f"scratch tree kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
