"""A bound on open segment files: descriptors are opened when used and the least recently used
idle ones closed, so a node's open files do not grow with its shards and segments.

Before it, every segment of every shard held a descriptor for the shard's life: a 1024-shard
stream took 1024 descriptors at least, and a process limit of 1024 answered INTERNAL halfway
through creating it (and every start after). Now a segment opens its file on first use
(``Segment.pin``) and registers here; whenever more than ``fds_max`` are registered, the least
recently used ones that are *idle* are closed. Idle means: no thread is using the descriptor
(``Segment``'s pin count is 0) and it holds no write that still awaits its fsync (closing then
would let a later fsync on a new descriptor miss a write-back error of the old one). So the bound
is soft by exactly the descriptors in use at this instant (at most one per I/O or reader thread)
plus the segments with unsynced writes (with ``--fsync interval``, at most one per shard written
in the last interval; with ``always``, none between commits).

Locks: this cache's lock is never held while waiting for a segment's lock (eviction only
*tries* a segment's lock and skips it when busy), and a segment never calls in here while holding
its own, so the two never deadlock. No trio here: it runs in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

FDS_MAX_DEFAULT = 512
_EVICT_SCAN_MAX = 32  # candidates looked at per registration: eviction stays O(1)-ish


class Closable(Protocol):
    def close_if_idle(self) -> bool:
        """Close the descriptor if nobody uses it and nothing awaits its fsync; whether the
        descriptor is now closed (also True if it was already). Must not block."""
        ...


class FdCache:
    def __init__(self, fds_max: int = FDS_MAX_DEFAULT) -> None:
        assert fds_max >= 1
        self.fds_max = fds_max
        self._lock = threading.Lock()
        self._open: OrderedDict[int, Closable] = OrderedDict()  # by id(); oldest use first
        self.opened = 0  # totals, for tests and metrics
        self.closed = 0

    def __len__(self) -> int:
        return len(self._open)

    def used(self, owner: Closable, *, opened: bool) -> None:
        """``owner`` has an open descriptor and just used it (``opened``: it opened it now)."""
        with self._lock:
            key = id(owner)
            self._open[key] = owner
            self._open.move_to_end(key)
            if opened:
                self.opened += 1
            if len(self._open) > self.fds_max:
                self._evict()

    def released(self) -> None:
        """A descriptor may have become idle: close the surplus now, so that at rest (nothing
        in use, nothing unsynced) the open descriptors are within the bound."""
        if len(self._open) > self.fds_max:  # a racy read is fine: it is only a hint
            with self._lock:
                self._evict()

    def forget(self, owner: Closable) -> None:
        """``owner`` closed its descriptor itself (retired)."""
        with self._lock:
            if self._open.pop(id(owner), None) is not None:
                self.closed += 1

    def _evict(self) -> None:
        """Close idle descriptors, oldest use first, until within the bound. Caller holds the
        lock. Busy ones (in use, or unsynced) go to the back so the next scan tries others."""
        for _ in range(min(_EVICT_SCAN_MAX, len(self._open))):
            if len(self._open) <= self.fds_max:
                return
            key, owner = next(iter(self._open.items()))
            if owner.close_if_idle():
                del self._open[key]
                self.closed += 1
            else:
                self._open.move_to_end(key)
