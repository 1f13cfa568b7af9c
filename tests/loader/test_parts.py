"""The loader's pure parts on real inputs: reference names, relocation formulas, the far-call stub, the
layout of a module patch-build made, the state header, the unwinder's reads of this process's memory."""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time

import capstone
import pytest

from patch_build.diffobj.read import read_object
from patch_build.elfcore.x86_64 import R_X86_64_PLT32
from patch_build.loader import layout, x86_64 as arch
from patch_build.loader.remote import PROT_EXEC, PROT_READ
from patch_build.loader.resolve import ResolveError, split_local
from patch_build.loader import libpaths
from patch_build.loader.libpaths import library_paths
from patch_build.loader.procfs import Memory, read_maps
from patch_build.loader.state import PatchedFunc, PatchRecord
from patch_build.loader.unwind import Unwinder, _StackWords
from livetarget import TRACER


@pytest.mark.parametrize("name, objs, expected", [
    (".kpatch.sym.server.lookup,0", ["server"], ("server", "lookup", 0)),
    (".kpatch.sym.server.counter.1,2", ["server"], ("server", "counter.1", 2)),  # NAME with a dot
    (".kpatch.sym.libfoo.so.1.state,0", ["libfoo.so", "libfoo.so.1"], ("libfoo.so.1", "state", 0)),
    (".kpatch.sym.libfoo.so.state,1", ["libfoo.so", "libfoo.so.1"], ("libfoo.so", "state", 1)),
])
def test_split_local(name, objs, expected):
    assert split_local(name, objs) == expected


@pytest.mark.parametrize("name", [".kpatch.sym.server.lookup", ".kpatch.sym.other.lookup,0",
                                  ".kpatch.sym.server.lookup,x"])
def test_split_local_rejects(name):
    with pytest.raises(ResolveError):
        split_local(name, ["server"])


def test_relocations():
    buf = bytearray(16)
    arch.apply(buf, 0, 1, S=0x1122334455667788, A=8, P=0x1000)  # R_X86_64_64
    assert int.from_bytes(buf[:8], "little") == 0x1122334455667790
    arch.apply(buf, 8, 4, S=0x2000, A=-4, P=0x1008)  # R_X86_64_PLT32, near
    assert int.from_bytes(buf[8:12], "little", signed=True) == 0x2000 - 4 - 0x1008
    far = 0x7F00_0000_0000
    arch.apply(buf, 8, 4, S=far, A=-4, P=0x1008, stub=0x3000)  # far: through the stub
    assert int.from_bytes(buf[8:12], "little", signed=True) == 0x3000 - 4 - 0x1008
    with pytest.raises(arch.RelocationError):
        arch.apply(buf, 8, 2, S=far, A=-4, P=0x1008)  # R_X86_64_PC32 to far data: no stub can help
    arch.apply(buf, 8, 42, S=far, A=-4, P=0x1008, got_slot=0x4000, got=0x4000)  # REX_GOTPCRELX: the slot
    assert int.from_bytes(buf[8:12], "little", signed=True) == 0x4000 - 4 - 0x1008
    with pytest.raises(arch.RelocationError, match="thread-local"):
        arch.apply(buf, 8, 23, S=0, A=0, P=0)  # R_X86_64_TPOFF32


# Program entry points as their runtimes write them: glibc's _start, musl's, Go's (a jmp); RIP-relative operands
# among the moved ones; and one that starts with a short branch, which no stub can move.
ENTRY_POINTS = {
    "glibc": "endbr64; xor %ebp, %ebp; mov %rdx, %r9; pop %rsi; mov %rsp, %rdx",
    "musl": "xor %rbp, %rbp; mov %rsp, %rdi; lea 0x1234(%rip), %rsi; and $-16, %rsp",
    "go": "jmp .+0x5000",
    "rip-relative": "lea 0x1234(%rip), %rsi; nop",
    "rip-relative-immediate": "xor %eax, %eax; cmpl $5, -0x100(%rip); nop",  # the disp32 before an imm8
    "short": "jmp .+4; nop; nop; nop; nop; nop; nop",
}


def _assembled(tmp_path, text: str) -> bytes:
    (tmp_path / "e.s").write_text(".text\n" + text.replace(";", "\n") + "\n")
    subprocess.run(["as", "e.s", "-o", "e.o"], cwd=tmp_path, check=True)
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.text", "e.o", "e.bin"], cwd=tmp_path, check=True)
    return (tmp_path / "e.bin").read_bytes()


def _disassembled(code: bytes, at: int) -> list[tuple[int, str, int | None]]:
    """Each instruction's address, mnemonic and the address its branch or RIP-relative operand reaches
    (capstone's reading)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for address, size, mnemonic, op_str in md.disasm_lite(code, at):
        rip = re.search(r"\[rip ([+-]) (\w+)\]", op_str)
        disp = int(rip[2], 0) * (-1 if rip[1] == "-" else 1) if rip else None
        target = int(op_str, 0) if mnemonic == "jmp" else address + size + disp if rip else None
        out.append((address, mnemonic, target))
    return out


@pytest.mark.parametrize("runtime", ENTRY_POINTS)
def test_entry_trap_moves_the_first_instructions(tmp_path, runtime):
    """The entry trap: a jump to the stub, which saves what it changes, signals the thread, restores, runs the
    instructions the jump covered (the same operations reaching the same addresses, by capstone's reading)
    and jumps back to the first one not moved. A short branch cannot be moved: no trap."""
    code = _assembled(tmp_path, ENTRY_POINTS[runtime])
    entry, stub = 0x40_1000, 0x40_9000
    trap = arch.entry_trap(entry, code, stub, 4321, 23)
    if runtime == "short":
        assert trap is None
        return
    assert trap.jump == arch.jmp_rel32(entry, stub)
    insns = _disassembled(trap.stub, stub)
    saved = len(arch.ENTRY_SAVED)
    assert [m for _, m, _ in insns[:saved + 5]] == ["push"] * saved + ["mov"] * 4 + ["syscall"]
    assert insns[saved + 5][0] == trap.stop_at  # the thread stops just past the syscall
    assert [m for _, m, _ in insns[saved + 5:2 * saved + 5]] == ["pop"] * saved
    moved, back = insns[2 * saved + 5:-1], insns[-1]
    original = _disassembled(code, entry)[:len(moved)]
    assert [(m, t) for _, m, t in moved] == [(m, t) for _, m, t in original]
    covered = original[-1][0] - entry + (back[0] - moved[-1][0])  # the last moved instruction's end
    assert covered >= arch.JMP_REL32_SIZE and back[1:] == ("jmp", entry + covered)


def test_far_stub_and_redirect():
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    stub = arch.far_stub(0x7F12_3456_7890)
    (insn, *_) = md.disasm(stub, 0x1000)
    assert insn.mnemonic == "jmp" and insn.op_str == "qword ptr [rip]"
    assert int.from_bytes(stub[6:14], "little") == 0x7F12_3456_7890
    site, jump = arch.redirect(bytes.fromhex("f30f1efa4889e5"), 0x5000, 0x9000)  # endbr64 first
    assert site == 0x5004
    (insn,) = md.disasm(jump, site)
    assert insn.mnemonic == "jmp" and int(insn.op_str, 16) == 0x9000
    assert arch.redirect(bytes.fromhex("554889e5"), 0x5000, 0x9000)[0] == 0x5000


def test_layout_of_a_built_module(builds):
    obj = read_object(str(builds.modules["incr-strict"]))
    (sections,) = layout.partition(obj, {"server": ["cmd_incr"]}).values()
    assert not any(s.name.startswith(".kpatch.") for s in sections)  # metadata is not loaded
    plan = layout.plan(obj, sections, 1000)
    assert plan.header == layout.PAGE and plan.size % layout.PAGE == 0
    for off, size, _ in plan.regions:
        assert off % layout.PAGE == 0 and size % layout.PAGE == 0
    code = [r for r in plan.regions if r[2] == PROT_READ | PROT_EXEC]
    assert len(code) == 1 and code[0][0] <= plan.code[0] < plan.code[1] <= code[0][0] + code[0][1]
    text = obj.section_named(".text.cmd_incr")
    assert code[0][0] <= plan.placed[text.index] < plan.code[1]
    # one far-call stub per function called outside the module (the library's, the target's `lookup`),
    # none for data (`lock`)
    called = {r.symbol.name for r in text.relocations if not r.symbol.is_defined and r.symbol.is_function
              or r.type == R_X86_64_PLT32}
    assert {"strtol", "snprintf", "pthread_mutex_lock", "pthread_mutex_unlock",
            ".kpatch.sym.server.lookup,0"} == called
    assert sorted(obj.symbols[i].name for i in plan.stubs) == sorted(called)
    near, far = 0x5555_0010_0000, 0x7F00_0000_1000  # the target's symbols, the library's

    def resolve(sym):
        return (near if sym.name.startswith(".kpatch.sym.") else far), 0

    image = layout.build(plan, 0x5555_0000_0000, resolve)
    assert len(image) == plan.size
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for index, off in plan.stubs.items():  # far-call stubs jump to where their symbol resolved
        (insn, *_) = md.disasm(bytes(image[off:off + 6]), 0)
        assert insn.mnemonic == "jmp"
        assert int.from_bytes(image[off + 6:off + 14], "little") == resolve(obj.symbols[index])[0]
    addr, size = layout.function_address(plan, 0x5555_0000_0000, "cmd_incr")
    assert addr == 0x5555_0000_0000 + plan.placed[text.index] and size == text.size


def test_state_header_round_trip():
    rec = PatchRecord("fix", 3, "/x/fix.kpatch", 1.5, [[0x1000, 0x3000]], [[0x2000, 0x2100]], "active",
                      [{"name": "server", "build_id": "ab"}],
                      [PatchedFunc("f", "server", 0, 0x10, 20, 0x2000, 30, 0x14, "e900000000", "older")])
    data = rec.encode() + b"\0" * 100
    assert PatchRecord.decode(data) == rec and rec.start == 0x1000
    assert PatchRecord.decode(b"NOTMAGIC" + data[8:]) is None
    assert PatchRecord.decode(data[:40]) is None


def test_state_header_is_the_records_fields_as_json():
    """encode() reads the fields without asdict's copies (it runs with every thread stopped): same bytes."""
    rec = PatchRecord("fix", 3, "/x/fix.kpatch", 1.5, [[0x1000, 0x3000]], [[0x2000, 0x2100]], "applying",
                      [{"name": "server", "build_id": "ab"}],
                      [PatchedFunc(f"f{i}", "server", i, 0x10, 20, 0x2000, 30, 0x14, "e900000000") for i in range(3)],
                      [[0x2000, 0x3000, 0x4000, 1]], ["older"], "libfix.so", 0x5000)
    blob = json.dumps(dataclasses.asdict(rec), separators=(",", ":")).encode()
    assert rec.encode()[16:] == blob and PatchRecord.decode(rec.encode()) == rec


def test_stack_words_match_word_by_word_reads():
    """A walk's reads come from page-sized windows of the stack: the same words as one read each, within
    the window, across its end, and for words past the stack's end (read alone)."""
    words = list(range(0x1111_0000_0000_0000, 0x1111_0000_0000_0000 + 1500))
    buf = (ctypes.c_uint64 * len(words))(*words)
    lo = ctypes.addressof(buf)
    mem = Memory(os.getpid())
    try:
        end = lo + 8 * 1000  # the "stack" ends inside the buffer: the words after it are read one by one
        reader = _StackWords(mem, end)
        for i in (0, 1, 511, 512, 513, 999, 1000, 1200, 5, 998):
            assert reader.u64(lo + 8 * i) == words[i] == mem.read_u64(lo + 8 * i)
        assert reader.u64(lo + 4) == struct.unpack_from("<Q", bytes(buf), 4)[0]  # unaligned too
        with pytest.raises(OSError):
            _StackWords(mem, 16).u64(0)  # unmapped: an error, as a single read gives
    finally:
        mem.close()


def test_unwinder_finds_the_mapping_of_an_address():
    pid = os.getpid()
    maps = read_maps(pid)
    mem = Memory(pid)
    try:
        unwinder = Unwinder([], list(reversed(maps)), mem, {}, pid)
        for m in maps:
            assert unwinder._mapping_at(m.start) is unwinder._mapping_at(m.end - 1)
            assert unwinder._mapping_at(m.start).start == m.start
        gaps = [a.end for a, b in zip(maps, maps[1:]) if a.end < b.start]
        assert gaps and all(unwinder._mapping_at(g) is None for g in gaps)
        assert unwinder._mapping_at(0) is None
    finally:
        mem.close()


def test_library_paths_finds_what_the_dynamic_linker_finds():
    """loader.libpaths: the libc this process maps (found by the dynamic linker through its cache) is among
    the files named libc.so.6; a name no library has finds nothing."""
    libc = next(m.path for m in read_maps(os.getpid()) if os.path.basename(m.path).startswith("libc.so"))
    found = library_paths({"libc.so.6"})
    assert os.path.realpath(libc) in {os.path.realpath(p) for p in found}, found
    assert library_paths({"libpatch-build-no-such-library.so.1"}) == []


FAKE_ENTRY = "libfake.so.1 (libc6,x86-64) => /patch-build-nonexistent/libfake.so.1"  # a line of `ldconfig -p`


@pytest.fixture
def fake_ldconfig(tmp_path, monkeypatch):
    """fake_ldconfig(BODY): `ldconfig` is from now on a shell script (first on PATH) that writes its pid to the
    file returned, then runs BODY."""
    def install(body: str):
        script = tmp_path / "ldconfig"
        script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid.tmp && mv {tmp_path}/pid.tmp {tmp_path}/pid\n{body}\n")
        script.chmod(0o755)
        return tmp_path / "pid"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return install


def _process_state(pid: int) -> str | None:
    """The state letter of process `pid` (Z: a zombie); None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def test_library_paths_gives_up_on_a_stalled_ldconfig(fake_ldconfig):
    """loader.libpaths: an ldconfig still running after _LDCONFIG_LIMIT s (a stalled filesystem) cannot say:
    the entries it printed are not used, it is killed and reaped, and the call returns in time."""
    pid_file = fake_ldconfig(f"printf '1 libs found in cache\\n\\t{FAKE_ENTRY}\\n'\nexec sleep 600")
    start = time.monotonic()
    assert library_paths({"libfake.so.1"}) == []
    elapsed = time.monotonic() - start
    assert libpaths._LDCONFIG_LIMIT <= elapsed < libpaths._LDCONFIG_LIMIT + libpaths._KILL_LIMIT + 1.0, elapsed
    assert _process_state(int(pid_file.read_text())) is None  # killed, and not left a zombie


def test_library_paths_reads_ldconfig_up_to_its_byte_limit(fake_ldconfig):
    """loader.libpaths: of an ldconfig that prints without end, the whole lines within _OUTPUT_LIMIT bytes are
    read (the first counts the entries; the part of a line at the cut is not), then it is killed and reaped,
    well within _LDCONFIG_LIMIT s."""
    pid_file = fake_ldconfig(f"exec yes '\t{FAKE_ENTRY}'")
    start = time.monotonic()
    entries = libpaths._cached()
    assert time.monotonic() - start < libpaths._LDCONFIG_LIMIT
    line = f"\t{FAKE_ENTRY}\n"
    assert " => " in line[:libpaths._OUTPUT_LIMIT % len(line)]  # the cut line would be an entry: a wrong path
    whole = libpaths._OUTPUT_LIMIT // len(line)
    assert entries == [("libfake.so.1", "/patch-build-nonexistent/libfake.so.1")] * (whole - 1)
    assert _process_state(int(pid_file.read_text())) is None


def test_library_paths_reaps_a_killed_ldconfig_once_it_dies(fake_ldconfig, monkeypatch, tmp_path):
    """loader.libpaths: an ldconfig that is not gone _KILL_LIMIT s after its SIGKILL is not waited for, and is
    reaped once it can be, not left a zombie. Here another tracer holds it (the zombie is the tracer's until
    it exits); a process the kernel holds in an uninterruptible sleep is as late to die."""
    monkeypatch.setattr(libpaths, "_LDCONFIG_LIMIT", 30.0)  # time for the tracer to start: the fake waits for it
    traced = tmp_path / "traced"
    os.mkfifo(traced)  # waited on without a child: a traced process stops at each signal, SIGCHLD too
    pid_file = fake_ldconfig(f"read go < {traced}\nexec sleep 600 >&-")  # its output ends once traced
    tracers = []

    def trace():
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        tracers.append(subprocess.Popen([sys.executable, "-c", TRACER, pid_file.read_text().strip()],
                                        stdout=subprocess.PIPE, text=True))
        if tracers[0].stdout.readline() == "tracing\n":
            traced.write_text("go\n")

    thread = threading.Thread(target=trace)
    thread.start()
    try:
        start = time.monotonic()
        assert libpaths._cached() == []
        elapsed = time.monotonic() - start
        thread.join()
        pid = int(pid_file.read_text())
        assert libpaths._KILL_LIMIT <= elapsed < 30, elapsed
        assert _process_state(pid) == "Z"  # killed, not reapable yet
        tracers[0].kill()
        tracers[0].wait()
        deadline = time.monotonic() + 5
        while _process_state(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _process_state(pid) is None
    finally:
        thread.join()
        for tracer in tracers:
            tracer.kill()
            tracer.wait()
