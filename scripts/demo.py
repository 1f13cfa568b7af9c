#!/usr/bin/env python3
"""`make demo`: fix a running server without restarting it.

Starts the bundled multi-threaded server (fixtures/server), shows its bug on a client connection, builds
the fix with `patch-build`, applies it live with `patch-ctl`, shows the fixed answer from the same PID on
the same connection with its data intact, then reverts; last, reads and sets one of the server's static
variables live with `patch-ctl var` (found and typed through DWARF, no registration), and undoes the set.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "fixtures" / "server"
FIX = SERVER / "incr-fix.patch"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(*cmd) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd])
    if result.returncode != 0:
        raise SystemExit(f"demo: '{cmd[0]}' failed with exit code {result.returncode}")


class Client:
    """One TCP connection to the server, kept open through the whole demo."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("r")

    def ask(self, line: str) -> str:
        self.sock.sendall((line + "\n").encode())
        answer = self.reader.readline().strip()
        print(f"   client> {line:<12} server> {answer}", flush=True)
        return answer

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="patch-build-demo-"))
    server = None
    try:
        shutil.copytree(SERVER, work / "src")
        shutil.copytree(SERVER, work / "run")
        say("building and starting the server (the build that is 'in production')")
        run("make", "-s", "-C", work / "run")
        server = subprocess.Popen([work / "run" / "server", "0", "4"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline().split()[1])
        print(f"   server PID {server.pid} listening on 127.0.0.1:{port}")

        say("the bug: INCR adds 2 instead of 1")
        client = Client(port)
        client.ask("SET visits 10")
        client.ask("INCR visits")

        say("the fix")
        print(FIX.read_text(), end="")
        say("building the patch module from the pristine source and the fix")
        run("patch-build", "-s", work / "src", "-t", "server", "--target-binary", work / "run" / "server",
            "-o", work / "out", FIX)
        module = work / "out" / "incr-fix.kpatch"
        run("patch-ctl", "info", module)

        say(f"applying it to the running server, PID {server.pid}")
        run("patch-ctl", "apply", "-p", server.pid, module)
        print("   same connection, same PID, data kept:")
        client.ask("GET visits")
        client.ask("INCR visits")
        run("patch-ctl", "list", "-p", server.pid)

        say("reverting: the original code runs again")
        run("patch-ctl", "revert", "-p", server.pid, "incr-fix")
        client.ask("INCR visits")

        say("variables, live: the server counts GETs in a static `hits` (stats.c has a `hits` too: file.c:name)")
        run("patch-ctl", "var", "get", "-p", server.pid, "server.c:hits")
        run("patch-ctl", "var", "set", "-p", server.pid, "server.c:hits", "1000")
        client.ask("HITS")
        run("patch-ctl", "var", "undo", "-p", server.pid, "server.c:hits")
        client.ask("HITS")
        client.close()
        if server.poll() is not None:
            raise SystemExit("demo: the server died")
        say(f"the server (PID {server.pid}) ran throughout; reports: {work / 'out'}")
        return 0
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work / "src", ignore_errors=True)
        shutil.rmtree(work / "run", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
