"""The clock every long-running part reads, so that tests can hand it their own."""

from __future__ import annotations

import time


class Clock:
    """Wall time for deadlines on the wire, monotonic time for intervals; tests pass their own."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
