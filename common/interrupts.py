"""The signals a command unwinds on (SIGINT, SIGTERM, SIGHUP) and the exception that carries one, shared by
the console scripts' entry points (diffobj.entry) and the code that holds signals while it must not stop
(loader.critical)."""
from __future__ import annotations

import signal

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised where the command can unwind."""

    last: Interrupted | None = None  # the latest raised: Typer turns one into a silent exit 130

    def __init__(self, signum: int):
        self.signum = signum
        self.reported = False
        super().__init__(signal.Signals(signum).name)
        Interrupted.last = self

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
