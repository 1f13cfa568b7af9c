"""The sections of a patch module and their records: `.kpatch.funcs`, one record per replaced function (the
layout of kpatch's `struct kpatch_patch_func`), and the user-space module's metadata."""
from __future__ import annotations

import struct
from dataclasses import dataclass

FUNCS = ".kpatch.funcs"
STRINGS = ".kpatch.strings"  # what the records' char * fields point into
TARGETS = ".kpatch.targets"  # user space: one (name, build_id) per target object
MODULE = ".kpatch.module"  # user space: (name, version)
TARGET_ENTRY = struct.Struct("<2Q")  # char *name, char *build_id
MODULE_ENTRY = struct.Struct("<2Q")  # char *name, u64 version
MODULE_VERSION = 1
# user space: the patch's hooks (templates/user/include/patch-hooks.h), one pointer per hook, in run order
HOOKS_PREFIX = ".kpatch.hooks."
HOOK_STAGES = ("pre_apply", "post_apply", "pre_revert", "post_revert")
HOOK_ENTRY = struct.Struct("<Q")  # the hook function's address

FIELDS = ("new_addr", "new_size", "old_addr", "old_size", "sympos", "name", "objname")
RECORD = struct.Struct("<7Q")  # seven little-endian u64, in FIELDS order
OFFSET = {name: i * 8 for i, name in enumerate(FIELDS)}
POINTERS = ("new_addr", "name", "objname")  # R_X86_64_64 relocations in an object, addresses once linked


@dataclass(frozen=True)
class FuncRecord:
    """One record as stored: pointer fields hold 0 in an unlinked object (their relocations say where they
    point), addresses in a linked image."""

    new_addr: int
    new_size: int
    old_addr: int
    old_size: int
    sympos: int
    name: int
    objname: int

    def pack(self) -> bytes:
        return RECORD.pack(*(getattr(self, f) for f in FIELDS))


def records(blob: bytes) -> list[FuncRecord]:
    """The records of a `.kpatch.funcs` section's contents; ValueError when it is not a whole number of them."""
    if len(blob) % RECORD.size:
        raise ValueError(f"{FUNCS} is {len(blob)} bytes, not a multiple of {RECORD.size}")
    return [FuncRecord(*fields) for fields in RECORD.iter_unpack(blob)]
