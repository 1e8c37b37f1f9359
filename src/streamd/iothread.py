"""Shard I/O off the event loop: one serial lane per shard, run by a bounded pool of threads.

``trio.to_thread.run_sync`` costs about 70 us at the median and up to 1 ms at p99 here (thread
cache, context copies, a fresh wake-up each call); the commit path pays it once per group
commit, on top of an fdatasync of about 80 us. A worker thread that waits on a condition and
reschedules the waiting task with ``TrioToken.run_sync_soon`` costs about 40 us median.

``IoThread`` is one shard's lane: its jobs run one at a time, in submission order, which is the
ShardLog's threading contract (appends, syncs, retention and close of one shard never overlap).
Lanes share an ``IoPool`` of at most ``threads_max`` threads: a lane with work is queued on the
pool once; a worker runs one of its jobs and queues it again at the back if more are waiting, so
a busy shard cannot starve the others. Threads start when work finds none idle (up to the
bound) and end after ``idle_s`` without work, so idle and closed shards hold no thread and a
node's threads do not grow with its shards. A lane given no pool gets a private pool of one
thread, named like the lane (the shape before pools; tests and tools use it).

Like ``to_thread.run_sync``'s default, a submitted call cannot be cancelled once queued: the
caller waits for it to finish, so file state and in-memory state never disagree. ``submit`` is
the same job without a waiting task: its outcome goes to a callback in the trio thread, so one
task can wait on the job and on something else at once (the shard's local fsync beside
replication) without a task per job; the submitter still waits for the callback before it
leaves the scope the job belongs to.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

IDLE_S_DEFAULT = 30.0
THREADS_MAX_DEFAULT = 16
_JOIN_S = 10.0


class IoPool:
    """At most ``threads_max`` worker threads running the lanes that have work."""

    def __init__(
        self, threads_max: int = THREADS_MAX_DEFAULT, idle_s: float = IDLE_S_DEFAULT, *, name: str
    ) -> None:
        assert threads_max >= 1 and idle_s > 0
        self.threads_max = threads_max
        self._idle_s = idle_s
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._ready: deque[IoThread] = deque()  # lanes with work, each at most once
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # workers in the wait below (a notified one still counts until it runs)
        self._closed = False
        self._numbers = itertools.count(1)

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        with self._cond:
            return len(self._threads)

    def schedule(self, lane: IoThread) -> None:
        """Queue a lane that has work (after ``close`` too: queued work always runs)."""
        with self._cond:
            self._ready.append(lane)
            self._cond.notify()
            if len(self._ready) > self._waiting and len(self._threads) < self.threads_max:
                number = next(self._numbers)
                name = self._name if self.threads_max == 1 else f"{self._name}-{number}"
                thread = threading.Thread(target=self._work, name=name, daemon=True)
                self._threads.add(thread)
                thread.start()

    def close(self, timeout_s: float = _JOIN_S) -> None:
        """Let queued work finish, then end every thread (blocks up to ``timeout_s``)."""
        with self._cond:
            self._closed = True
            threads = list(self._threads)
            self._cond.notify_all()
        for thread in threads:
            thread.join(timeout_s)

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._ready:
                    if self._closed:
                        self._threads.discard(me)
                        return
                    self._waiting += 1
                    woken = self._cond.wait(self._idle_s)
                    self._waiting -= 1
                    if not woken and not self._ready:  # idle for idle_s: this thread ends
                        self._threads.discard(me)
                        return
                lane = self._ready.popleft()
            lane._run_one()


class IoThread:
    """One shard's serial lane of blocking jobs (see the module docstring)."""

    def __init__(
        self, name: str, idle_s: float = IDLE_S_DEFAULT, *, pool: IoPool | None = None
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._own_pool = pool is None
        self._pool = IoPool(1, idle_s, name=name) if pool is None else pool
        self._lock = threading.Lock()
        # (the job, what receives its outcome in the trio thread)
        self._jobs: deque[tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]] = (
            deque()
        )
        self._scheduled = False  # Invariant: True iff queued on the pool or being run
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether a thread of this lane's pool is alive (a private pool: this lane's)."""
        return self._pool.threads > 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a pool thread and return its result (or raise its exception)."""
        assert not self._stopped, "IoThread used after stop()"
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        self._queue(lambda: fn(*args), partial(trio.lowlevel.reschedule, task))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def submit(
        self, fn: Callable[..., T], *args: Any, done: Callable[[outcome.Outcome[T]], None]
    ) -> None:
        """Queue ``fn(*args)``; ``done(outcome)`` runs in the trio thread once it has run. The
        caller must wait for ``done`` (a job is never abandoned). From the trio thread only."""
        assert not self._stopped, "IoThread used after stop()"
        self._queue(lambda: fn(*args), done)

    def _queue(
        self, job: Callable[[], Any], deliver: Callable[[outcome.Outcome[Any]], None]
    ) -> None:
        with self._lock:
            self._jobs.append((job, deliver))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._pool.schedule(self)

    def stop(self, timeout_s: float = _JOIN_S) -> None:
        """No more jobs. A private pool's thread ends (blocks up to ``timeout_s``); a shared
        pool is closed by its owner. Every job submitted was awaited, so none is pending."""
        if self._stopped:
            return
        self._stopped = True
        if self._own_pool:
            self._pool.close(timeout_s)

    def _run_one(self) -> None:
        """Worker thread: run the lane's oldest job; queue the lane again if more wait."""
        with self._lock:
            fn, deliver = self._jobs.popleft()
        result = outcome.capture(fn)
        self._token.run_sync_soon(deliver, result)
        with self._lock:
            again = bool(self._jobs)
            self._scheduled = again
        if again:
            self._pool.schedule(self)
