"""Read an x86-64 ELF relocatable object into the differ's model: elfcore's reader, with the sections and
symbols the passes annotate."""
from __future__ import annotations

from patch_build.diffobj.model import ObjectFile, Section, Symbol
from patch_build.elfcore import read


def read_object(path: str, blob: bytes | None = None) -> ObjectFile:
    """Read the object at `path`, or its bytes `blob` when the caller has read (and checked) them."""
    return read.read_object(path, blob, section_type=Section, symbol_type=Symbol)
