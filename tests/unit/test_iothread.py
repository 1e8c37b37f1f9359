"""The shard I/O thread: results and errors come back, order is kept, and the thread ends when
idle and comes back on the next job."""

from __future__ import annotations

import threading

import pytest
import trio

from streamd.iothread import IoThread


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
