"""A dedicated worker thread for one shard's blocking I/O, with a cheap hand-off from trio.

``trio.to_thread.run_sync`` costs about 70 us at the median and up to 1 ms at p99 here (thread
cache, context copies, a fresh wake-up each call); the commit path pays it once per group
commit, on top of an fdatasync of about 80 us. A long-lived thread fed through a
``SimpleQueue``, which reschedules the waiting task with ``TrioToken.run_sync_soon``, costs about
40 us median and 65 us p99. One thread per shard also serialises that shard's appends, syncs and
retention in submission order, which is the ShardLog's threading contract.

Like ``to_thread.run_sync``'s default, a submitted call cannot be cancelled once queued: the
caller waits for it to finish, so file state and in-memory state never disagree.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[[], Any], trio.lowlevel.Task] | None


class IoThread:
    def __init__(self, name: str) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        self._stopped = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread and return its result (or raise its exception)."""
        assert not self._stopped, "IoThread used after stop()"
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        self._jobs.put((lambda: fn(*args), task))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def stop(self, timeout_s: float = 10.0) -> None:
        """Let queued jobs finish, then end the thread (blocks up to ``timeout_s``)."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)
            self._thread.join(timeout_s)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, task = job
            result = outcome.capture(fn)
            self._token.run_sync_soon(trio.lowlevel.reschedule, task, result)
