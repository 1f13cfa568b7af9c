"""Shared pieces of the loader tests (imported by conftest.py and the tests): the fixture server
(fixtures/server) running, a client load, and `patch-ctl` run as a separate process."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from support.runs import Run


REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "fixtures" / "server"


# `python -c TRACER PID` holds process PID traced (PTRACE_SEIZE: it runs on) until killed (or 120 s): no one
# else may trace it meanwhile, and its parent cannot reap it once dead (a zombie ptracee is its tracer's).
TRACER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(0x4206, int(sys.argv[1]), None, None) != 0:
    sys.exit(f"seize: errno {ctypes.get_errno()}")
print("tracing", flush=True)
time.sleep(120)
"""


def patch_ctl_argv(*args) -> list[str]:
    return [sys.executable, "-m", "patch_build.loader", *map(str, args)]


def patch_ctl_env() -> dict:
    env = dict(os.environ)
    env.pop("PATCH_BUILD_DEBUG", None)
    return env


def patch_ctl(*args, timeout: float = 60) -> Run:
    proc = subprocess.run(patch_ctl_argv(*args), capture_output=True, text=True, env=patch_ctl_env(),
                          timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: Run, code: int, *fragments: str) -> None:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("patch-ctl: error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0], run.stderr


@dataclass
class Builds:
    src: Path  # pristine sources (what patch-build gets)
    deployed: Path  # the built tree the server runs from
    variant: Path  # the same sources built with other flags: another build-id
    cet: Path  # built with -fcf-protection: every function starts with endbr64
    modules: dict[str, Path]


class Server:
    """The fixture server, started from a built tree; queried over its own persistent connection."""

    def __init__(self, tree: Path, workers: int = 6, *options: str):
        self.proc = subprocess.Popen([str(tree / "server"), "0", str(workers), *options], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        assert line.startswith("port "), line
        self.port = int(line.split()[1])
        self.pid = self.proc.pid
        self.conn = self.connect()

    def connect(self) -> Connection:
        return Connection(self.port)

    def ask(self, *commands: str) -> list[str]:
        return [self.conn.ask(c) for c in commands]

    def status(self) -> dict[str, str]:
        with open(f"/proc/{self.pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)

    def assert_running_untraced(self) -> None:
        st = self.status()
        assert st["State"][0] in "SR", st["State"]
        assert st["TracerPid"] == "0"
        assert self.ask("PING") == ["PONG"]

    def patch_mappings(self) -> list[str]:
        with open(f"/proc/{self.pid}/maps") as f:
            return [l for l in f if "/memfd:kpatch:" in l]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.conn.close()


class Connection:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rw", newline="\n")

    def ask(self, command: str) -> str:
        self.file.write(command + "\n")
        self.file.flush()
        reply = self.file.readline()
        if not reply.endswith("\n"):
            raise ConnectionError(f"connection closed (after {command!r})")
        return reply.rstrip("\n")

    def send(self, command: str) -> None:
        self.file.write(command + "\n")
        self.file.flush()

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class Load:
    """Clients that keep one connection each for the whole test, storing and reading back their own keys and
    checking every reply; bounded by `max_seconds` in case a test forgets to stop it."""

    def __init__(self, server: Server, clients: int = 3, max_seconds: float = 150, get_reply: str = "VALUE {}"):
        """`get_reply`: the reply a GET of a stored value must match (a regular expression; {} is the value)."""
        self.server = server
        self.get_reply = get_reply
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        self.conns = [server.connect() for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        conn, n = self.conns[i], 0
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            key, value = f"load{i}-{n % 200}", f"v{n}"
            try:
                replies = [conn.ask(f"SET {key} {value}"), conn.ask(f"GET {key}"), conn.ask("PING")]
            except (OSError, ConnectionError) as e:
                self.failures.append(f"client {i}: {e}")
                return
            if not (replies[0] == "OK" and re.fullmatch(self.get_reply.format(value), replies[1])
                    and replies[2] == "PONG"):
                self.failures.append(f"client {i}: {replies}")
            with self.lock:
                self.requests += 3
            n += 1
            time.sleep(0.002)  # steady load, leaving CPU to patch-ctl on a 2-core machine

    def count(self) -> int:
        with self.lock:
            return self.requests

    def assert_progress(self) -> None:
        """Requests are still being served (the load is not stuck behind a stopped thread)."""
        before = self.count()
        deadline = time.monotonic() + 10
        while self.count() < before + 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.count() >= before + 30, "the load stalled"
        assert not self.failures, self.failures

    def finish(self) -> int:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)
        for c in self.conns:
            c.close()
        assert not self.failures, self.failures
        return self.requests
