"""What the passes found that cannot be live-patched, and what the user should know."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    symbol: str
    reason: str

    def __str__(self) -> str:
        return f"{self.symbol}: {self.reason}"


@dataclass
class Problems:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, symbol: str, reason: str) -> None:
        p = Problem(symbol, reason)
        if p not in self.errors:
            self.errors.append(p)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
