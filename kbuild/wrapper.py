"""The compiler wrapper: scripts named like the compilers, first on PATH, that add the sections the differ
needs and record every object they produce.

Each wrapper is a small POSIX shell script (a compile must not pay for a Python start-up) that runs the real
compiler with `-ffunction-sections -fdata-sections` appended (so they win over the project's flags) and the
include folder of the patch headers (templates/user/include: patch-hooks.h, patch-shadow.h), plus a
-ffile-prefix-map that makes the scratch tree's objects name SRCDIR (reproducible, and as a build in SRCDIR), and,
for a successful `-c`, appends one line per object to the log: cwd, object, source, compiler, arguments. Any
other run (a link) gets `-Wl,--emit-relocs`, for link-diff (kbuild.lto); gcc ignores it when it does not link.
CC and CXX are exported pointing at the wrappers, so CMake caches the wrappers, not the real compilers.
"""
from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from patch_build.common.errors import InputError

EXTRA_FLAGS = ("-ffunction-sections", "-fdata-sections")
# the headers a user-space patch may include: patch-hooks.h, patch-shadow.h (after the project's own -I)
PATCH_INCLUDE = Path(os.fspath(resources.files("patch_build.templates").joinpath("user", "include")))
LINK_FLAGS = ("-Wl,--emit-relocs",)  # the linked program keeps its code's relocations: link-diff reads it
STANDARD_COMPILERS = ("cc", "gcc", "c++", "g++")
ARG_SEP = "\x1f"  # separates a recorded command's arguments (they may hold spaces)

_SCRIPT = """#!/bin/sh
# patch-build compiler wrapper for {real}
log={log}
compile= out= prev=
for a in "$@"; do
  case $prev in
    -o) out=$a ;;
  esac
  case $a in
    -c) compile=1 ;;
    -o?*) out=${{a#-o}} ;;
  esac
  prev=$a
done
if [ -z "$compile" ]; then
  exec {real} "$@" {flags} {link_flags}
fi
{real} "$@" {flags} || exit $?
args=$(printf '%s\\037' "$@")
prev=
for a in "$@"; do
  case $prev in -o|-MF|-MT|-MQ|-include|-imacros|-x|-Xlinker|-I|-D|-U) prev=$a; continue ;; esac
  prev=$a
  case $a in
    -*) ;;
    *.c|*.cc|*.cp|*.cpp|*.cxx|*.CPP|*.c++|*.C|*.s|*.S|*.sx)
      o=$out
      if [ -z "$o" ]; then o=${{a##*/}}; o=${{o%.*}}.o; fi
      # one write per record: parallel compiles append to the same log
      printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$PWD" "$o" "$a" {real} "$args" >> "$log"
      ;;
  esac
done
"""


@dataclass
class CompiledObject:
    object: Path  # absolute
    source: Path  # absolute
    cwd: Path
    compiler: str  # the real compiler's path
    args: list[str]  # as the build passed them, without the wrapper's additions


def _real_compiler(name: str, search_path: str) -> str | None:
    found = shutil.which(name, path=search_path)
    return os.path.realpath(found) if found else None


def install_wrappers(wrap_dir: Path, log: Path, env: dict[str, str],
                     prefix_map: tuple[Path, Path] | None = None) -> dict[str, str]:
    """Write wrappers into `wrap_dir` for the standard compilers and those $CC/$CXX name; return the build
    environment: PATH with the wrappers first, CC/CXX pointing at them. `prefix_map` (scratch tree, SRCDIR)
    makes the objects record SRCDIR's paths (debug info, __FILE__), as a build in SRCDIR would."""
    flags = [*EXTRA_FLAGS, f"-I{PATCH_INCLUDE}"]
    if prefix_map is not None:
        flags.append(f"-ffile-prefix-map={prefix_map[0]}={prefix_map[1]}")
    wrap_dir.mkdir(parents=True, exist_ok=True)
    log.touch()
    search_path = env.get("PATH", os.defpath)
    chosen = {"CC": env.get("CC") or "cc", "CXX": env.get("CXX") or "c++"}
    names = set(STANDARD_COMPILERS)
    for value in chosen.values():
        names.add(os.path.basename(shlex.split(value)[0]))
    for name in sorted(names):
        real = _real_compiler(name, search_path)
        if real is None:
            continue
        script = wrap_dir / name
        script.write_text(_SCRIPT.format(real=shlex.quote(real), log=shlex.quote(os.fspath(log)),
                                         flags=shlex.join(flags), link_flags=shlex.join(LINK_FLAGS)))
        script.chmod(0o755)
    out = dict(env)
    out["PATH"] = f"{wrap_dir}{os.pathsep}{search_path}"
    for var, value in chosen.items():
        words = shlex.split(value)
        wrapped = wrap_dir / os.path.basename(words[0])
        if not wrapped.exists():
            raise InputError(f"{var}={value}: compiler {words[0]!r} not found")
        out[var] = shlex.join([os.fspath(wrapped), *words[1:]])
    return out


def read_log(log: Path, start: int = 0) -> tuple[dict[Path, CompiledObject], int]:
    """The objects recorded from byte `start` of the log (a later record of the same object wins) that still
    exist, and the log's end offset (the start of the next build's records)."""
    with open(log, "rb") as f:
        f.seek(start)
        data = f.read()
    objects: dict[Path, CompiledObject] = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        fields = line.split("\t", 4)
        if len(fields) != 5:
            continue
        cwd, obj, src, compiler, args = fields
        path = Path(os.path.normpath(os.path.join(cwd, obj)))
        objects[path] = CompiledObject(object=path, source=Path(os.path.normpath(os.path.join(cwd, src))),
                                       cwd=Path(cwd), compiler=compiler, args=args.split(ARG_SEP)[:-1])
    return {p: o for p, o in objects.items() if p.is_file()}, start + len(data)
