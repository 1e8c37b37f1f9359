"""The one Clock: wall time in production, virtual time in the simulator and in tests.

Code that needs the time takes a ``Clock`` instead of calling ``time`` itself, so a test can run
hours of timeouts in microseconds and a seeded simulation replays exactly. Two readings, as the
kernel has them: ``now_ms`` is wall-clock time (for timestamps stored in batches: it may jump),
``monotonic_ms`` never goes back (for timeouts, leases, intervals).

``VirtualClock`` only moves when told (``advance_ms``, ``advance_to_ms``); both readings move
together and never go back.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch (wall clock; may jump)."""
        ...

    def monotonic_ms(self) -> int:
        """Milliseconds from an arbitrary origin; never goes back."""
        ...


class WallClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class VirtualClock:
    def __init__(self, start_ms: int = 0, wall_origin_ms: int = 1_700_000_000_000) -> None:
        assert start_ms >= 0
        self._now_ms = start_ms
        self._wall_origin_ms = wall_origin_ms

    def now_ms(self) -> int:
        return self._wall_origin_ms + self._now_ms

    def monotonic_ms(self) -> int:
        return self._now_ms

    def advance_ms(self, delta_ms: int) -> None:
        if delta_ms < 0:
            raise ValueError(f"a clock does not go back (asked to move {delta_ms} ms)")
        self._now_ms += delta_ms

    def advance_to_ms(self, monotonic_ms: int) -> None:
        """Move to ``monotonic_ms`` (a no-op if the clock is already there or past it)."""
        self._now_ms = max(self._now_ms, monotonic_ms)
