"""The notes of an ELF file that identify it: the GNU build-id, which the linker derives from the contents."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from patch_build.common.errors import InputError
from patch_build.elfcore.parsing import pyelftools_errors

if TYPE_CHECKING:  # pyelftools is imported by the first file opened
    from elftools.elf.elffile import ELFFile


def build_id(elf: ELFFile) -> str | None:
    """The GNU build-id as lowercase hex, or None when the file records none."""
    for section in elf.iter_sections():
        if section["sh_type"] == "SHT_NOTE":
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    return note["n_desc"]
    return None


def build_id_of(path: str | os.PathLike | int) -> str | None:
    """The GNU build-id of the ELF file at `path`, or open as descriptor `path` (read through it, never opened
    again: the daemon's fanotify gate must not open a file whose opens wait for it); only its notes are read.
    InputError when it is not readable as ELF."""
    from elftools.elf.elffile import ELFFile

    name = f"descriptor {path}" if isinstance(path, int) else os.path.basename(path)
    with open(path, "rb", closefd=not isinstance(path, int)) as f:
        try:
            return build_id(ELFFile(f))
        except pyelftools_errors() as e:
            raise InputError(f"{name}: not a readable ELF file ({e})") from None
