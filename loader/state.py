"""What patch-ctl records inside the target: a header at the start of each patch mapping.

Each applied patch lives in mappings (one per target object) of memfds named `kpatch:NAME`, which
/proc/PID/maps shows as `/memfd:kpatch:NAME (deleted)`; a later patch-ctl finds them there and reads the
header at the start of the first: magic, format version, length, then JSON (module, apply order, its
mappings, functions with the bytes each jump replaced, unwind information registered in the target, the
shared library it loaded with dlopen or redirects into).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field, fields

from patch_build.loader.procfs import Mapping, Memory

MAGIC = b"KPATCHLD"
VERSION = 1
RECORD_HEAD = struct.Struct("<8sII")  # magic, format version, length of the JSON after it; kpatch-var's too
MAPPING_PREFIX = "/memfd:kpatch:"
# A record's states. PENDING: mapped, nothing jumps to it. APPLYING and REVERTING: jumps being written or
# taken back, with every thread stopped; a patch-ctl killed there leaves them, and the next one finishes
# the revert (loader.recovery). ACTIVE: every jump in place. REVERTED: none; unmapped next.
PENDING, APPLYING, ACTIVE, REVERTING, REVERTED = "pending", "applying", "active", "reverting", "reverted"
SETTLED = (ACTIVE, REVERTED)


def _fields(record) -> dict:
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass
class PatchedFunc:
    name: str
    objname: str
    sympos: int
    old_addr: int
    old_size: int
    new_addr: int
    new_size: int
    site: int  # where the jump was written
    orig: str  # hex of the bytes the jump replaced (the original code, or a previous patch's jump)
    prev: str | None = None  # the patch this one stacked on for this function


@dataclass
class PatchRecord:
    module: str
    seq: int  # apply order, 1 = oldest
    path: str  # the module file it came from
    applied: float  # time.time() at apply
    mappings: list[list[int]]  # [start, size] of each mapping, one per target; the first holds this header
    code: list[list[int]]  # [lo, hi) of the patch's code in each mapping
    state: str = PENDING
    targets: list[dict] = field(default_factory=list)  # {"name", "build_id"}
    funcs: list[PatchedFunc] = field(default_factory=list)
    # [eh_frame, frame object, __deregister_frame_info, registered] of each .eh_frame handed to the target's
    # unwinder: what a revert must deregister before it unmaps. Noted before the call (registered 0) and
    # confirmed after it (1): a patch-ctl killed in between leaves it unknown, and the mapping is then kept.
    frames: list[list[int]] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)  # earlier patches whose code this one's code reaches
    # A record of loader.libraries: the shared library its jumps lead into (through far-jump stubs in its
    # mappings, which then hold no other code), or that it loaded; `handle` is the target's dlopen handle
    # this record owns (dlclose'd by its revert), 0 when it owns none.
    library: str = ""
    handle: int = 0
    # The patch's hooks (patch-hooks.h): stage -> [[function name, address in the patch's code]...], run order
    hooks: dict[str, list[list]] = field(default_factory=dict)

    @property
    def start(self) -> int:
        return self.mappings[0][0]

    def encode(self) -> bytes:
        """The header's bytes. Written with every thread stopped (twice an apply): the fields are read as
        they are, without `asdict`'s deep copies, which cost more than all the jumps' writes."""
        data = _fields(self)
        data["funcs"] = [_fields(f) for f in self.funcs]
        blob = json.dumps(data, separators=(",", ":")).encode()
        return RECORD_HEAD.pack(MAGIC, VERSION, len(blob)) + blob

    @classmethod
    def decode(cls, data: bytes) -> PatchRecord | None:
        if len(data) < RECORD_HEAD.size:
            return None
        magic, version, length = RECORD_HEAD.unpack_from(data)
        if magic != MAGIC or version != VERSION or RECORD_HEAD.size + length > len(data):
            return None
        try:
            raw = json.loads(data[RECORD_HEAD.size:RECORD_HEAD.size + length])
            raw["funcs"] = [PatchedFunc(**f) for f in raw["funcs"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError):
            return None


def find_patches(maps: list[Mapping], mem: Memory) -> list[PatchRecord]:
    """The patches recorded in the process, oldest first."""
    records = []
    for m in maps:
        if m.path.startswith(MAPPING_PREFIX) and m.offset == 0:
            try:
                head = mem.read(m.start, RECORD_HEAD.size)
                _, _, length = RECORD_HEAD.unpack(head)
                if head[:8] != MAGIC or length > (64 << 20):
                    continue
                record = PatchRecord.decode(mem.read(m.start, RECORD_HEAD.size + length))
            except (OSError, struct.error):
                continue
            if record is not None and record.mappings and record.start == m.start:
                records.append(record)
    return sorted(records, key=lambda r: r.seq)


def orphans(maps: list[Mapping], records: list[PatchRecord]) -> list[tuple[int, int]]:
    """(start, size) of patch memory no record names: mapped by a patch-ctl killed before it wrote the
    record (nothing jumps there: jumps come after the record)."""
    owned = [(start, start + size) for r in records for start, size in r.mappings]
    return [(m.start, m.end - m.start) for m in maps if m.path.startswith(MAPPING_PREFIX)
            and not any(lo <= m.start < hi for lo, hi in owned)]


def open_memfds(pid: int) -> list[int]:
    """The target's file descriptors of patch memory: a patch-ctl killed between creating a memfd and
    closing it leaves one open."""
    fds = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith(MAPPING_PREFIX):
                fds.append(int(name))
        except (OSError, ValueError):
            continue
    return sorted(fds)


def current_patches(patches: list[PatchRecord]) -> dict[int, tuple[PatchRecord, PatchedFunc]]:
    """Old function address -> (record, func) of the newest active patch of it."""
    current = {}
    for record in patches:
        if record.state == ACTIVE:
            for f in record.funcs:
                current[f.old_addr] = (record, f)
    return current
