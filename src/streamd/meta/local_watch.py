"""Watch for the embedded store: an in-memory history of recent revisions and its readers.

SQLite has no change feed, and in the embedded mode every watcher lives in the same process as
the store, so the store records each committed revision's events here, in the worker thread
that committed it and under the store's lock (so entries arrive in revision order, whatever
order the trio tasks resume in), and then wakes the trio watchers (``TrioToken.run_sync_soon``,
the one thread-safe way into the trio run).

Bounded: ``revisions_max`` revisions are kept. Older ones are *compacted*, as etcd compacts its
history: a watch that starts (or falls) below the oldest kept revision gets ``CompactedError``
and must snapshot again. History starts empty at open, so after a restart a watch can start
from the current revision + 1 on, never earlier (leased keys, the usual reason to watch in the
embedded mode, do not survive a restart either).

A revision's events are delivered together, never split; a batch holds whole revisions up to
``events_max`` events (more only when one revision alone has more).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from .errors import CompactedError
from .store import WatchBatch, WatchEvent

REVISIONS_MAX_DEFAULT: Final = 10_000
BATCH_EVENTS_MAX: Final = 1_000


class WatchHistory:
    """The last ``revisions_max`` revisions' events. ``append`` from any thread; the rest from
    the trio thread."""

    def __init__(self, current_revision: int, revisions_max: int = REVISIONS_MAX_DEFAULT) -> None:
        self.revisions_max = revisions_max
        self._lock = threading.Lock()
        # Invariant: revisions in _entries are contiguous and end at _last_revision.
        self._entries: collections.deque[tuple[int, tuple[WatchEvent, ...]]] = collections.deque()
        self._last_revision = current_revision
        self._oldest_revision = current_revision + 1  # the oldest revision one may watch from
        self._changed = trio.Event()

    def append(self, revision: int, events: tuple[WatchEvent, ...]) -> None:
        """Record one committed revision (the store calls this under its own lock)."""
        with self._lock:
            assert revision == self._last_revision + 1, (revision, self._last_revision)
            self._entries.append((revision, events))
            self._last_revision = revision
            while len(self._entries) > self.revisions_max:
                self._entries.popleft()
            self._oldest_revision = self._entries[0][0]

    def notify(self) -> None:
        """Wake every watcher waiting for a change (trio thread only)."""
        self._changed.set()
        self._changed = trio.Event()

    def changed(self) -> trio.Event:
        """The event the next ``notify`` sets: take it *before* reading, then wait on it."""
        return self._changed

    def read(self, prefix: str, start_revision: int) -> tuple[WatchBatch | None, int]:
        """Events under ``prefix`` from ``start_revision``, and the revision to read from next.

        Raises CompactedError if ``start_revision`` is older than the history kept.
        """
        with self._lock:
            if start_revision < self._oldest_revision:
                raise CompactedError(
                    f"revision {start_revision} is compacted; the oldest kept is "
                    f"{self._oldest_revision}",
                    self._oldest_revision,
                )
            if start_revision > self._last_revision:
                return None, start_revision
            first = start_revision - self._oldest_revision
            events: list[WatchEvent] = []
            scanned = start_revision - 1
            for index in range(first, len(self._entries)):
                revision, entry = self._entries[index]
                matching = [e for e in entry if e.key.startswith(prefix)]
                if events and len(events) + len(matching) > BATCH_EVENTS_MAX:
                    break
                events.extend(matching)
                scanned = revision
        if not events:
            return None, scanned + 1
        return WatchBatch(tuple(events), scanned), scanned + 1


class LocalWatch:
    """One watcher over a WatchHistory. ``tick`` runs before each wait (the store expires due
    leases there) and returns how long the wait may last (None: until the next change)."""

    def __init__(
        self,
        history: WatchHistory,
        prefix: str,
        start_revision: int,
        tick: Callable[[], Awaitable[float | None]],
    ) -> None:
        self._history = history
        self._prefix = prefix
        self._next_revision = start_revision
        self._tick = tick

    def __aiter__(self) -> LocalWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            changed = self._history.changed()
            batch, self._next_revision = self._history.read(self._prefix, self._next_revision)
            if batch is not None:
                await trio.lowlevel.checkpoint()
                return batch
            wait_s = await self._tick()
            if changed.is_set():
                continue
            with trio.move_on_after(float("inf") if wait_s is None else wait_s):
                await changed.wait()
