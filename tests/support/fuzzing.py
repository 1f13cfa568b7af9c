"""Fuzzing harness shared by tests/fuzz and bench/fuzz_soak.py: deterministic mutants of an input, a worker
process that runs a console script many times without paying Python and LIEF start-up per input, and the
check every outcome must pass (exit 0-3, no traceback, one error line at most, no raw control characters).

    with Runner("patch_build.diffobj.cli", "patch-diff") as run:
        for what, blob in mutations(seed_bytes, seed=1, count=100):
            path.write_bytes(blob)
            problems = check_outcome(run([str(path), str(other), "-o", str(out)]), "patch-diff")

The worker (`python3 tests/support/fuzzing.py worker MODULE PROG`) imports MODULE once and runs
`MODULE.main_entry()` once per JSON line read from stdin ({"argv": [...], "timeout": s}), each with its
stdout and stderr (file descriptors 1 and 2, so output of C code and child processes too) captured, under a
SIGALRM time limit, answering one JSON line per invocation on its own copy of the original stdout. The
parent also watches the clock: an invocation stuck in C code (where SIGALRM cannot interrupt) gets the
worker killed, reported as a hang, and a fresh worker started.
"""
from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
EXIT_CODES = range(0, 4)  # docs/design.md: 0 done, 1 refused, 2 bad input, 3 no change (4 = our bug)
WORKER_MEMORY_LIMIT = 3 << 30  # address space of a worker: reading /dev/zero must fail, not take the host

# ---------------------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------------------

INTERESTING = {
    1: (0, 0x7F, 0x80, 0xFF, 1),
    2: (0, 0x7FFF, 0x8000, 0xFFFF, 0xFF00, 0xFFF1, 1),
    4: (0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1, 0xFFFF),
    8: (0, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40),
}
# Bytes that make a name non-UTF-8 or put control characters on a terminal.
NASTY_NAME_BYTES = (b"\xff", b"\xc3", b"\x80\x81", b"\x1b[31m", b"\x07", b"\r", b"\n", b"\x9b", b"\xed\xa0\x80")

_EHDR_FIELDS = {  # ELF64 header: name -> (offset, size)
    "e_type": (16, 2), "e_machine": (18, 2), "e_shoff": (0x28, 8), "e_flags": (0x30, 4),
    "e_ehsize": (0x34, 2), "e_shentsize": (0x3A, 2), "e_shnum": (0x3C, 2), "e_shstrndx": (0x3E, 2),
}
_SHDR_FIELDS = {  # ELF64 section header, 64 bytes
    "sh_name": (0, 4), "sh_type": (4, 4), "sh_flags": (8, 8), "sh_offset": (0x18, 8), "sh_size": (0x20, 8),
    "sh_link": (0x28, 4), "sh_info": (0x2C, 4), "sh_addralign": (0x30, 8), "sh_entsize": (0x38, 8),
}
_SYM_FIELDS = {  # ELF64 symbol, 24 bytes
    "st_name": (0, 4), "st_info": (4, 1), "st_other": (5, 1), "st_shndx": (6, 2), "st_value": (8, 8),
    "st_size": (16, 8),
}
_RELA_FIELDS = {  # ELF64 RELA entry, 24 bytes; r_info = symbol << 32 | type
    "r_offset": (0, 8), "r_type": (8, 4), "r_sym": (12, 4), "r_addend": (16, 8),
}
SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 2, 3, 4


@dataclass
class _ElfLayout:
    """Where the interesting fields of an ELF64 little-endian file are: (description, offset, size)."""

    fields: list[tuple[str, int, int]]
    strings: list[tuple[str, int, int]]  # string tables: (name, offset, size)
    debug: list[tuple[str, int, int]]  # .debug_* and .eh_frame contents

    @classmethod
    def of(cls, data: bytes) -> Optional["_ElfLayout"]:
        if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return None
        fields = [(f"ELF header {n}", o, s) for n, (o, s) in _EHDR_FIELDS.items()]
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
        if shoff == 0 or shoff + shnum * 64 > len(data):
            return cls(fields, [], [])
        headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
        shstr = headers[shstrndx] if shstrndx < shnum else None

        def name_of(h) -> str:
            if shstr is None or shstr[4] + h[0] >= len(data):
                return "?"
            start = shstr[4] + h[0]
            end = data.find(b"\0", start, start + 200)
            return data[start:end if end >= 0 else start].decode("ascii", "replace")

        strings, debug = [], []
        for i, h in enumerate(headers):
            name, base = name_of(h), shoff + i * 64
            fields += [(f"section {i} ({name}) {n}", base + o, s) for n, (o, s) in _SHDR_FIELDS.items()]
            sh_type, sh_offset, sh_size = h[1], h[4], h[5]
            if sh_offset + sh_size > len(data):
                continue
            if sh_type == SHT_SYMTAB:
                for k in range(1, sh_size // 24):
                    fields += [(f"symbol {k} {n}", sh_offset + k * 24 + o, s) for n, (o, s) in _SYM_FIELDS.items()]
            elif sh_type == SHT_RELA:
                for k in range(sh_size // 24):
                    fields += [(f"{name} entry {k} {n}", sh_offset + k * 24 + o, s)
                               for n, (o, s) in _RELA_FIELDS.items()]
            elif sh_type == SHT_STRTAB and sh_size:
                strings.append((name, sh_offset, sh_size))
            if sh_size and (name.startswith(".debug_") or name == ".eh_frame"):
                debug.append((name, sh_offset, sh_size))
        return cls(fields, strings, debug)


def _put(buf: bytearray, offset: int, size: int, value: int) -> None:
    buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _mutate_once(rng: random.Random, buf: bytearray, layout: Optional[_ElfLayout], partner: Optional[bytes]) -> str:
    """Apply one mutation to `buf` in place; return what it did."""
    kinds = ["bitflip", "byte", "truncate", "duplicate", "word"]
    if layout:
        kinds += ["field"] * 6 + ["field-nudge"] * 2
        if layout.strings:
            kinds += ["name"] * 2
        if layout.debug:
            kinds += ["debug"]
    if partner:
        kinds.append("splice")
    kind = rng.choice(kinds)
    n = len(buf)
    if n == 0:
        buf.extend(rng.choice([b"\x7fELF", b"{", b"\0" * 64]))
        return "empty input replaced"
    if kind == "bitflip":
        offsets = sorted(rng.randrange(n) for _ in range(rng.randint(1, 8)))
        for off in offsets:
            buf[off] ^= 1 << rng.randrange(8)
        return f"bits flipped at {', '.join(hex(o) for o in offsets)}"
    if kind == "byte":
        off, value = rng.randrange(n), rng.choice(INTERESTING[1])
        buf[off] = value
        return f"byte {value:#x} at {off:#x}"
    if kind == "word":
        size = rng.choice((2, 4, 8))
        off, value = rng.randrange(max(1, n - size)), rng.choice(INTERESTING[size])
        _put(buf, off, min(size, n - off), value)
        return f"{size}-byte value {value:#x} at {off:#x}"
    if kind in ("field", "field-nudge"):
        what, off, size = rng.choice(layout.fields)
        if off + size > n:
            return "field past the end (unchanged)"
        if kind == "field":
            value = rng.choice(INTERESTING[size])
        else:
            value = int.from_bytes(buf[off:off + size], "little") + rng.choice((-1, 1, 2, 8, 24, 64, 4096))
        _put(buf, off, size, value)
        return f"{what} = {value & ((1 << 8 * size) - 1):#x}"
    if kind in ("name", "debug"):  # both aim at a section's contents, which an earlier step may have cut
        section, off, size = rng.choice(layout.strings if kind == "name" else layout.debug)
        size = min(size, n - off)
        if size <= 0:
            return f"{section} past the end (unchanged)"
    if kind == "name":
        at = off + rng.randrange(size)
        if rng.random() < 0.2:  # drop the terminator of the table's last string
            buf[off + size - 1] = ord("A")
            return f"{section} loses its final NUL"
        nasty = rng.choice(NASTY_NAME_BYTES)
        buf[at:at + len(nasty)] = nasty[: max(0, off + size - 1 - at)]
        return f"{section} name bytes {nasty!r} at {at:#x}"
    if kind == "debug":
        offsets = [off + rng.randrange(size) for _ in range(rng.randint(1, 4))]
        for o in offsets:
            buf[o] = rng.choice(INTERESTING[1] + (rng.randrange(256),))
        return f"{section} bytes changed at {', '.join(hex(o) for o in offsets)}"
    if kind == "truncate":
        cut = rng.choice((rng.randrange(n), rng.randrange(min(n, 128)), n - rng.randint(1, min(n, 64))))
        del buf[cut:]
        return f"truncated to {cut} bytes"
    if kind == "duplicate":
        length = rng.randint(1, min(n, 256))
        src, dst = rng.randrange(n - length + 1), rng.randrange(n)
        chunk = bytes(buf[src:src + length])
        if rng.random() < 0.5:
            buf[dst:dst] = chunk
            return f"{length} bytes from {src:#x} inserted at {dst:#x}"
        buf[dst:dst + length] = chunk
        return f"{length} bytes from {src:#x} copied over {dst:#x}"
    # splice: a run of the partner input over the same place
    start = rng.randrange(min(n, len(partner)))
    length = rng.randint(1, min(len(partner) - start, 4096))
    buf[start:start + length] = partner[start:start + length]
    return f"{length} bytes of the partner input spliced in at {start:#x}"


def mutations(data: bytes, seed: int, count: int, partner: Optional[bytes] = None) -> Iterator[tuple[str, bytes]]:
    """`count` deterministic mutants of `data` (the same for the same seed, whatever PYTHONHASHSEED), each
    with a description of what was changed. ELF64 inputs get most mutations in their header, section
    header, symbol and relocation fields, string tables and debug sections; `partner` (e.g. the other
    object of a pair) is spliced in sometimes."""
    layout = _ElfLayout.of(data)
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        buf = bytearray(data)
        steps = [_mutate_once(rng, buf, layout, partner) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        yield f"mutant {i} of seed {seed}: " + "; ".join(steps), bytes(buf)


def json_mutations(value, seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """`count` deterministic structural mutants of a JSON document: a value replaced by one of another
    type, deeply nested values, huge numbers, nasty strings, a key dropped; as UTF-8 bytes."""
    marker = json.dumps("\u2063marker\u2063")
    for i in range(count):
        rng = random.Random(f"json:{seed}:{i}")
        doc = json.loads(json.dumps(value))
        paths = list(_json_paths(doc))
        path = rng.choice(paths)
        kind = rng.choice(["type", "type", "type", "nest", "number", "string", "drop"])
        if kind == "drop" and path:
            del _json_get(doc, path[:-1])[path[-1]]
            yield f"json {i}: {_json_path_text(path)} removed", json.dumps(doc).encode()
            continue
        if kind == "nest":  # too deep for json.dumps: spliced in as text
            depth = rng.choice((50, 5000, 100000))
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            text = json.dumps(_json_set(doc, path, json.loads(marker)))
            text = text.replace(marker, opener * depth + "0" + closer * depth)
            yield f"json {i}: {_json_path_text(path)} nested {depth} deep", text.encode()
            continue
        new = rng.choice({
            "type": [None, True, 0, -1, 1.5, "", "x", [], {}, [1, "a"], {"a": 1}],
            "number": [10 ** 400, -(2 ** 64), 2 ** 63, 1e308, -0.0],
            "string": ["\x1b[31mred", "a\nb", "\x00", "\x9b", "\ud800", "\u00e9" * 10, "x" * 100000],
            "drop": [None],
        }[kind])
        text = json.dumps(_json_set(doc, path, new))
        yield (f"json {i}: {_json_path_text(path)} = {kind} {str(new)[:40]!r}",
               text.encode("utf-8", "surrogatepass"))


def _json_paths(doc, path=()):
    yield path
    if isinstance(doc, dict):
        for k in doc:
            yield from _json_paths(doc[k], path + (k,))
    elif isinstance(doc, list):
        for k in range(len(doc)):
            yield from _json_paths(doc[k], path + (k,))


def _json_get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _json_set(doc, path, new):
    if not path:
        return new
    _json_get(doc, path[:-1])[path[-1]] = new
    return doc


def _json_path_text(path) -> str:
    return "$" + "".join(f"[{k!r}]" for k in path)


# ---------------------------------------------------------------------------------------------------------
# Running a console script many times
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    argv: list[str]
    code: Optional[int]  # None: hang; negative: the worker died of that signal
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def hang(self) -> bool:
        return self.code is None

    @property
    def kind(self) -> str:
        """A coarse class for counting: exit N, hang, signal N."""
        if self.code is None:
            return "hang"
        if self.code < 0:
            return f"signal {-self.code}"
        return f"exit {self.code}"


class Runner:
    """A worker process running `MODULE.main_entry()` (the console script PROG) once per call. The time
    limit is generous: the first call pays for lazily imported modules, and a loaded CI host is slow."""

    def __init__(self, module: str, prog: str, timeout: float = 30.0, cwd: Optional[str] = None,
                 env: Optional[dict] = None, memory_limit: int = WORKER_MEMORY_LIMIT):
        self.module, self.prog, self.timeout, self.cwd = module, prog, timeout, cwd
        self.memory_limit = memory_limit
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))
        self.env.pop("PATCH_BUILD_DEBUG", None)  # tracebacks on purpose would hide the real failures
        self.proc: Optional[subprocess.Popen] = None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "worker", self.module, self.prog, str(self.memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.cwd, env=self.env)
        if self._expect_line(120.0) != b"ready\n":  # the imports are done
            self._stop()
            raise RuntimeError(f"the fuzzing worker for {self.module} did not start")

    def _expect_line(self, timeout: float) -> Optional[bytes]:
        """The worker's next line; b"" when it died, None when it did not answer within `timeout`."""
        # One request, one answer line: nothing is ever left in the reader's buffer, so select() on the
        # pipe tells whether the next line has started to arrive.
        if not select.select([self.proc.stdout.fileno()], [], [], timeout)[0]:
            return None
        return self.proc.stdout.readline()

    def _stop(self) -> Optional[int]:
        """Kill the worker; its exit status (negative: the signal that ended it)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except BrokenPipeError:
                pass
        self.proc = None
        return code

    def __call__(self, argv: list[str], timeout: Optional[float] = None) -> Outcome:
        timeout = self.timeout if timeout is None else timeout
        if self.proc is None:
            self._start()
        start = time.monotonic()
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "timeout": timeout}).encode() + b"\n")
            self.proc.stdin.flush()
            line = self._expect_line(timeout + 5.0)  # the worker's own SIGALRM fires first when it can
        except BrokenPipeError:
            line = b""
        seconds = time.monotonic() - start
        if not line:  # died (a segfault, the OOM killer): its status; or stuck in C code: a hang
            code = self._stop()
            return Outcome(argv, code if line == b"" else None, b"", b"", seconds)
        answer = json.loads(line)
        return Outcome(argv, answer["code"], answer["stdout"].encode("latin-1"),
                       answer["stderr"].encode("latin-1"), seconds)

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Hang(BaseException):
    """Raised by SIGALRM in the worker: not an Exception, so the command's own handlers let it through."""


def _worker(module: str, prog: str, memory_limit: int) -> None:
    import importlib
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    answers = os.fdopen(os.dup(1), "w")
    requests = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the command must not read the request stream
    main_entry = importlib.import_module(module).main_entry

    def on_alarm(signum, frame):
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    answers.write("ready\n")
    answers.flush()
    for line in requests:
        request = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.argv = [prog, *request["argv"]]
            code: Optional[int] = None
            signal.setitimer(signal.ITIMER_REAL, request["timeout"])
            try:
                try:
                    main_entry()
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except Exception:  # as the interpreter would: a traceback and exit 1
                    traceback.print_exc()
                    code = 1
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _Hang:
                code = None
            # entry_point blocks the termination signals once a command is settled: undo for the next one
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # an unencodable character: the command's bug, shown by what is missing
                    pass
            out.seek(0)
            err.seek(0)
            # Bounded: a runaway output would otherwise make the answer line enormous.
            stdout, stderr = out.read(1 << 20), err.read(1 << 20)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        answers.write(json.dumps({"code": code, "stdout": stdout.decode("latin-1"),
                                  "stderr": stderr.decode("latin-1")}) + "\n")
        answers.flush()


# ---------------------------------------------------------------------------------------------------------
# What every outcome must satisfy
# ---------------------------------------------------------------------------------------------------------

_PYTHON_WARNING = re.compile(rb"^\S+:\d+: \w*Warning: ", re.MULTILINE)
_RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def check_outcome(outcome: Outcome, prog: str) -> list[str]:
    """What is wrong with one run on bad input (empty when nothing): a hang or a crash, an exit code outside
    0-3 (4 is an internal error), a traceback or Python warning, more than one error line (but for a refusal, exit 1, which
    gives one per reason), a failure without an error line, raw control characters."""
    problems = []
    if outcome.hang:
        problems.append("hang (no answer within the time limit)")
    elif outcome.code < 0:
        problems.append(f"killed by signal {-outcome.code}")
    elif outcome.code not in EXIT_CODES:
        problems.append(f"exit {outcome.code}")
    if b"Traceback" in outcome.stderr:
        problems.append("traceback on stderr")
    if _PYTHON_WARNING.search(outcome.stderr):
        problems.append("a Python warning on stderr")
    errors = [ln for ln in outcome.stderr.splitlines() if ln.startswith(f"{prog}: error:".encode())]
    if len(errors) > 1 and outcome.code != 1:  # a refusal (exit 1) names each reason on a line of its own
        problems.append(f"{len(errors)} error lines")
    for name, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
        m = _RAW_CONTROL.search(text)
        if m:
            problems.append(f"raw control character {m.group()!r} on {name}")
    if outcome.code and outcome.code > 0 and outcome.code != 3 and not errors:
        problems.append(f"exit {outcome.code} without a `{prog}: error:` line")
    return problems


def describe(what: str, outcome: Outcome, problems: list[str]) -> str:
    """A failure message: the mutation, the command, what went wrong, the end of stderr."""
    tail = outcome.stderr.decode("utf-8", "replace")[-600:]
    return f"{what}\n  {' '.join(outcome.argv)}\n  {'; '.join(problems)}\n  stderr: {tail}"


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
