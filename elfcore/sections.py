"""A section of an ELF file by name, for the readers that need one section of a file (the compiler's
`.comment`) rather than a whole object's model."""
from __future__ import annotations

import os

from elftools.elf.elffile import ELFFile


def section_contents(path: str | os.PathLike, name: str) -> bytes | None:
    """The contents of the section called `name` (b"" for a NOBITS one), or None when there is none."""
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        if sec is None:
            return None
        return b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
