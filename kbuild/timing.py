"""Seconds spent per step of a build, for the step log, the report and `bench/`."""
from __future__ import annotations

import time


class StepTimes:
    """A builder's `timings`: the seconds spent in each named step, summed over its calls."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def _timed(self, key: str, fn, *args):
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.monotonic() - start
