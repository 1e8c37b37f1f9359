"""A dedicated worker thread for one shard's blocking I/O, with a cheap hand-off from trio.

``trio.to_thread.run_sync`` costs about 70 us at the median and up to 1 ms at p99 here (thread
cache, context copies, a fresh wake-up each call); the commit path pays it once per group
commit, on top of an fdatasync of about 80 us. A long-lived thread fed through a
``SimpleQueue``, which reschedules the waiting task with ``TrioToken.run_sync_soon``, costs about
40 us median and 65 us p99. One thread per shard also serialises that shard's appends, syncs and
retention in submission order, which is the ShardLog's threading contract.

The thread ends after ``idle_s`` without work and the next job starts a new one, so idle and
closed (resharded) shards hold no thread. A lock makes "the queue is empty, so this thread
ends" and "a job was queued, so a thread runs" one decision each: no job is ever stranded.

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
IDLE_S_DEFAULT = 30.0


class IoThread:
    def __init__(self, name: str, idle_s: float = IDLE_S_DEFAULT) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._name = name
        self._idle_s = idle_s
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # None while no thread runs
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread and return its result (or raise its exception)."""
        assert not self._stopped, "IoThread used after stop()"
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        self._submit((lambda: fn(*args), task))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Let queued jobs finish, then end the thread (blocks up to ``timeout_s``)."""
        if self._stopped:
            return
        self._stopped = True
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join(timeout_s)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():  # nothing was queued meanwhile: end this thread
                        self._thread = None
                        return
                continue
            if job is None:
                with self._lock:
                    self._thread = None
                return
            fn, task = job
            result = outcome.capture(fn)
            self._token.run_sync_soon(trio.lowlevel.reschedule, task, result)
