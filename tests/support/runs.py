"""The outcome of running one of the console scripts in a test."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        return lines[-1] if lines else ""
