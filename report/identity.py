"""Identities a report records: the tool, the compiler and its flags, targets, patches, the module.

Only facts that are the same on every build of the same inputs: no host paths, no clock. The compiler is
read from the objects themselves (`.comment`, and the flags from DWARF's DW_AT_producer when built with
-g), so the report says what really compiled the code rather than what was asked for.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from patch_build.elfcore.dwarf import dwarf_errors, read_dwarf
from patch_build.elfcore.notes import build_id_of
from patch_build.elfcore.sections import section_contents
from patch_build.report.model import Artifact, Compiler, Target, Tool

TOOL_NAME = "patch-build"
# Flags that carry host paths; GCC leaves most of them out of DW_AT_producer, this catches the rest.
_PATH_FLAGS = ("-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map=", "-fprofile-prefix-map=",
               "-I", "-iquote", "-isystem", "-o", "--sysroot", "-MF", "-MT", "-MD")


def tool() -> Tool:
    from importlib import metadata

    return Tool(TOOL_NAME, metadata.version(TOOL_NAME))  # installed: packages live under patch_build.*


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact(path: str | os.PathLike) -> Artifact:
    path = Path(path)
    return Artifact(path=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def source_date_epoch(env=None) -> int | None:
    """The build's SOURCE_DATE_EPOCH (reproducible-builds.org), or None; a malformed value is ignored."""
    value = (os.environ if env is None else env).get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else None


def user_target(path: str | os.PathLike) -> Target:
    return Target(name=Path(path).name, build_id=build_id_of(path))


def kernel_target(name: str, release: str, vmlinux: str | os.PathLike | None = None) -> Target:
    return Target(name=name, kernel_release=release, build_id=build_id_of(vmlinux) if vmlinux else None)


def _producer_flags(producer: str) -> list[str]:
    return [f for f in producer.split() if f.startswith("-") and not f.startswith(_PATH_FLAGS)]


def compiler_of(path: str | os.PathLike) -> Compiler | None:
    """The compiler an object records in `.comment`, with its flags from DW_AT_producer (built with -g)."""
    with dwarf_errors(str(path)):
        comment = section_contents(path, ".comment")
        if comment is None:
            return None
        version = next((s for s in comment.decode("utf-8", "replace").split("\0") if s), "")
        flags: list[str] = []
        dwarf = read_dwarf(str(path))
        for cu in dwarf.iter_CUs() if dwarf is not None else ():
            producer = cu.get_top_DIE().attributes.get("DW_AT_producer")
            if producer is not None:
                flags = _producer_flags(producer.value.decode("utf-8", "replace"))
                break
    return Compiler(version=version, flags=flags)
