"""The Clock: a virtual one moves only when told and never goes back."""

from __future__ import annotations

import pytest

from streamd.clock import Clock, VirtualClock, WallClock


def test_virtual_clock_moves_only_when_told() -> None:
    clock = VirtualClock(start_ms=5, wall_origin_ms=1_000)
    assert (clock.monotonic_ms(), clock.now_ms()) == (5, 1_005)
    clock.advance_ms(10)
    clock.advance_to_ms(12)  # already past: no-op
    assert clock.monotonic_ms() == 15
    clock.advance_to_ms(40)
    assert (clock.monotonic_ms(), clock.now_ms()) == (40, 1_040)
    with pytest.raises(ValueError):
        clock.advance_ms(-1)


def test_wall_clock_reads_the_system_clock() -> None:
    clock: Clock = WallClock()
    first = clock.monotonic_ms()
    assert clock.monotonic_ms() >= first
    assert clock.now_ms() > 1_600_000_000_000
