"""The shard I/O thread: results and errors come back, order is kept, and the thread ends when
idle and comes back on the next job."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from streamd.iothread import IoPool, IoThread


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


async def test_results_errors_and_submission_order() -> None:
    io = IoThread("test-io-order")
    seen: list[int] = []
    try:
        assert await io.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await io.run(lambda: 1 // 0)
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(io.run, seen.append, i)
                await trio.lowlevel.checkpoint()
        assert seen == list(range(50))
    finally:
        io.stop()
    assert _threads("test-io-order") == 0


async def test_idle_thread_ends_and_the_next_job_starts_one() -> None:
    io = IoThread("test-io-idle", idle_s=0.05)
    try:
        assert not io.running
        assert await io.run(threading.current_thread) is not threading.current_thread()
        assert io.running and _threads("test-io-idle") == 1
        with trio.fail_after(5):
            while io.running:  # noqa: ASYNC110 (the thread leaves on its own; no event to wait)
                await trio.sleep(0.01)
        assert _threads("test-io-idle") == 0
        for round_ in range(20):  # jobs racing the idle exit are never stranded
            with trio.fail_after(5):
                assert await io.run(lambda r=round_: r) == round_
            await trio.sleep(0.05 if round_ % 2 else 0.049)
    finally:
        io.stop()


async def test_a_shared_pool_bounds_threads_keeps_each_lanes_order_and_shrinks() -> None:
    pool = IoPool(3, idle_s=0.05, name="test-io-pool")
    lanes = [IoThread(f"lane-{i}", pool=pool) for i in range(20)]
    seen: dict[int, list[int]] = {i: [] for i in range(len(lanes))}
    busy = peak = 0
    guard = threading.Lock()
    in_lane: set[int] = set()

    def job(lane: int, n: int) -> None:
        nonlocal busy, peak
        with guard:
            assert lane not in in_lane, "two jobs of one lane at once"
            in_lane.add(lane)
            busy += 1
            peak = max(peak, busy)
        time.sleep(0.001)
        with guard:
            busy -= 1
            in_lane.discard(lane)
        seen[lane].append(n)

    try:
        async with trio.open_nursery() as nursery:
            for n in range(10):
                for i, lane in enumerate(lanes):
                    nursery.start_soon(lane.run, job, i, n)
                    await trio.lowlevel.checkpoint()
        assert all(order == list(range(10)) for order in seen.values())
        assert peak <= 3 and _pool_threads("test-io-pool") <= 3
        with trio.fail_after(5):
            while pool.threads:  # noqa: ASYNC110 (threads leave on their own)
                await trio.sleep(0.01)
        assert await lanes[0].run(lambda: 7) == 7  # and come back for new work
    finally:
        for lane in lanes:
            lane.stop()
        pool.close()
    assert _pool_threads("test-io-pool") == 0


def _pool_threads(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))
