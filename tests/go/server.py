"""The counter server (fixtures/go/counter) running, and clients of it."""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
from pathlib import Path


class Client:
    """One connection, kept open: the server must keep it across patches."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rw")

    def ask(self, line: str) -> str:
        self.file.write(line + "\n")
        self.file.flush()
        answer = self.file.readline()
        if not answer:
            raise ConnectionError("the server closed the connection")
        return answer.rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Server:
    """The server; its stderr (the runtime's GC trace with GODEBUG=gctrace=1) goes to a file."""

    def __init__(self, binary: Path, env: dict | None = None):
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=dict(os.environ, **(env or {})))
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line + self.stderr()
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def client(self) -> Client:
        return Client(self.port)

    def alive(self) -> bool:
        return self.proc.poll() is None and os.path.exists(f"/proc/{self.pid}")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


class Load:
    """Clients incrementing their own key in a loop, each on one connection, until stopped."""

    def __init__(self, server: Server, clients: int = 4):
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.replies: list[list[int]] = [[] for _ in range(clients)]
        self.threads = [threading.Thread(target=self._run, args=(server, i), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, server: Server, i: int) -> None:
        try:
            client = server.client()
            while not self.stop_event.is_set():
                self.replies[i].append(int(client.ask(f"incr load{i}").split()[1]))
            client.close()
        except (OSError, ValueError, IndexError) as e:
            self.errors.append(f"client {i}: {e}")

    def steps(self, i: int, last: int) -> list[int]:
        """The last `last` increments client i saw."""
        r = self.replies[i][-last - 1:]
        return [b - a for a, b in zip(r, r[1:])]

    def finish(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(10)
