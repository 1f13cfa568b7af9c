"""Walk a stopped thread's stack with the objects' `.eh_frame` CFI; scan conservatively where there is none.

Each object's `.eh_frame_hdr` search table finds the FDE for a PC by binary search, and elfcore decodes
just that FDE (its CFI rows are cached), so a walk does not parse a whole libc `.eh_frame`. Where a frame
has no usable CFI (code without an FDE, a patch's own code, a signal frame's CFA expression) the rest of the
stack is scanned: every word that points into code counts as a return address, which can only err on the
safe side.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from patch_build.elfcore.ehframe import (
    EH_FRAME,
    EH_FRAME_HDR,
    OFFSET,
    UNDEFINED,
    MalformedEhFrame,
    fdes,
    frame_table,
    search_table,
)
from patch_build.loader.objects import LoadedObject
from patch_build.loader.procfs import Mapping, Memory, read_maps

RSP, RBP = 7, 6  # DWARF register numbers (x86-64 psABI)
MAX_FRAMES = 512
MAX_SCAN = 16 << 20


class StackUnknown(Exception):
    pass


@dataclass(frozen=True)
class Row:
    cfa_reg: int
    cfa_offset: int
    ra_offset: int | None  # None: outermost frame (return address undefined)
    rbp_offset: int | None  # saved rbp at CFA + offset, None: unchanged


def _row_pc(row: tuple[int, Row | None]) -> int:
    return row[0]


class ObjectCfi:
    """The CFI of one loaded object, looked up by link-time address."""

    def __init__(self, obj: LoadedObject):
        self.obj = obj
        self.starts: list[int] = []
        self.fdes: list[int] = []  # offsets of FDEs in .eh_frame, parallel to starts
        self.eh_frame: tuple[int, bytes] | None = obj.elf.section_data(EH_FRAME)  # (address, contents)
        self._rows: dict[int, tuple[int, int, list[tuple[int, Row | None]]] | None] = {}
        if self.eh_frame is None:
            return
        self.eh_frame_addr = self.eh_frame[0]
        hdr = obj.elf.section_data(EH_FRAME_HDR)
        entries = search_table(*hdr, self.eh_frame_addr) if hdr is not None else None
        if entries is None:
            try:
                entries = sorted((e.header["initial_location"], e.offset) for e in fdes(self.eh_frame[1],
                                                                                         self.eh_frame_addr))
            except MalformedEhFrame:  # no usable CFI: the stack is scanned conservatively
                entries = []
        self.starts = [s for s, _ in entries]
        self.fdes = [o for _, o in entries]

    def row(self, vaddr: int) -> Row | None | bool:
        """The CFI row for `vaddr`; False when the object has no FDE covering it."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0 or self.eh_frame is None:
            return False
        table = self._rows.get(i, 0)
        if table == 0:
            table = self._rows[i] = self._decode(self.fdes[i])
        if table is None:
            return False
        start, end, rows = table
        if not start <= vaddr < end:
            return False
        j = bisect.bisect_right(rows, vaddr, key=_row_pc) - 1
        return rows[j][1] if j >= 0 else False

    def _decode(self, fde_offset: int):
        try:
            table = frame_table(self.eh_frame[1], self.eh_frame_addr, fde_offset)
        except MalformedEhFrame:  # malformed or unsupported CFI: treated as none, i.e. a conservative scan
            return None
        if table is None:
            return None
        rows = []
        for row in table.rows:
            ra, rbp = row.rules.get(table.return_address), row.rules.get(RBP)
            if row.cfa is None or row.cfa[0] not in (RSP, RBP):
                rows.append((row.pc, None))
                continue
            if ra is None or ra.kind == UNDEFINED:
                ra_off = None
            elif ra.kind == OFFSET:
                ra_off = ra.arg
            else:
                rows.append((row.pc, None))
                continue
            rbp_off = rbp.arg if rbp is not None and rbp.kind == OFFSET else None
            rows.append((row.pc, Row(row.cfa[0], row.cfa[1], ra_off, rbp_off)))
        return table.start, table.end, rows


class _StackWords:
    """The 8-byte words a walk reads from one thread's stack, read a page-sized window at a time: one read
    of /proc/PID/mem costs about as much for a page as for a word, and a walk reads one or two words a
    frame. Words outside the stack mapping (a frame pointer gone astray) are read one by one."""

    WINDOW = 4096

    def __init__(self, mem: Memory, stack_end: int):
        self.mem = mem
        self.stack_end = stack_end
        self.lo = 0
        self.data = b""

    def u64(self, addr: int) -> int:
        off = addr - self.lo
        if not 0 <= off <= len(self.data) - 8:
            size = min(self.WINDOW, self.stack_end - addr)
            try:
                if size < 8:
                    raise OSError
                self.data, self.lo, off = self.mem.read(addr, size), addr, 0
            except OSError:  # not within the stack: only the word itself, as if the window were not there
                return self.mem.read_u64(addr)
        return int.from_bytes(self.data[off:off + 8], "little")


class Unwinder:
    """Return addresses on threads' stacks, for one stop of the process."""

    def __init__(self, objects: list[LoadedObject], maps: list[Mapping], mem: Memory,
                 cfi_cache: dict[str, ObjectCfi], pid: int):
        # Looked up by bisection: the walks run with every thread stopped (the apply pause).
        self.objects = sorted(objects, key=lambda o: o.start)
        self.starts = [o.start for o in self.objects]
        self.ends = [o.end for o in self.objects]
        self._set_maps(maps)
        self.mem = mem
        self.cfi_cache = cfi_cache
        self.pid = pid

    def _set_maps(self, maps: list[Mapping]) -> None:
        self.maps = sorted(maps, key=lambda m: m.start)
        self.map_starts = [m.start for m in self.maps]

    def _mapping_at(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self.map_starts, addr) - 1
        return self.maps[i] if i >= 0 and addr in self.maps[i] else None

    def _row(self, pc: int) -> Row | None | bool:
        i = bisect.bisect_right(self.starts, pc) - 1
        if i < 0 or pc >= self.ends[i]:
            return False
        obj = self.objects[i]
        cfi = self.cfi_cache.get(obj.path)
        if cfi is None:
            cfi = self.cfi_cache[obj.path] = ObjectCfi(obj)
        return cfi.row(pc - obj.base)

    def code_addresses(self, rip: int, rsp: int, rbp: int) -> tuple[list[int], tuple[int, int] | None]:
        """The PCs of the thread's frames, innermost first, and the stack range [from, to) still to scan
        conservatively when the walk could not reach the outermost frame (None when it did)."""
        stack = self._mapping_at(rsp)
        if stack is None:  # a thread stack mapped since the maps were read
            self._set_maps(read_maps(self.pid))
            stack = self._mapping_at(rsp)
        stack_end = stack.end if stack else rsp
        words = _StackWords(self.mem, stack_end)
        pcs = [rip]
        pc, first = rip, True
        for _ in range(MAX_FRAMES):
            row = self._row(pc if first else pc - 1)
            if row is False or row is None:
                return pcs, (rsp, stack_end)
            cfa = (rsp if row.cfa_reg == RSP else rbp) + row.cfa_offset
            if row.ra_offset is None:
                return pcs, None
            try:
                pc = words.u64(cfa + row.ra_offset)
                if row.rbp_offset is not None:
                    rbp = words.u64(cfa + row.rbp_offset)
            except OSError:
                return pcs, (rsp, stack_end)
            if pc == 0:
                return pcs, None
            rsp, first = cfa, False
            pcs.append(pc)
        return pcs, (rsp, stack_end)

    def warm(self, pid: int, tids: list[int]) -> None:
        """Decode, before stopping anything, the CFI the walks will most likely need: that of the threads
        sitting in system calls, whose PC and SP /proc/PID/task/TID/syscall shows while they run."""
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                    fields = f.read().split()
                sp, pc = int(fields[-2], 16), int(fields[-1], 16)
                self.code_addresses(pc, sp, 0)
            except (OSError, ValueError, IndexError):
                continue  # running, exited, or a walk that met garbage: only a cache left cold

    def scan(self, lo: int, hi: int) -> list[int]:
        """Every 8-byte word of the stack range, each a possible return address. Raises StackUnknown when
        the range cannot be read whole: what was not seen cannot be called safe."""
        lo &= ~7
        if hi - lo > MAX_SCAN:
            raise StackUnknown(f"{hi - lo} bytes of stack without CFI to scan")
        if hi <= lo:
            return []
        try:
            data = self.mem.read(lo, hi - lo)
        except OSError as e:
            raise StackUnknown(f"stack unreadable at {lo:#x} ({e})") from None
        return list(struct.unpack(f"<{len(data) // 8}Q", data))
