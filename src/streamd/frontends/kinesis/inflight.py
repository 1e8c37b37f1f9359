"""A bound on the bytes of request bodies in flight across all of the gateway's connections.

Each connection bounds its own request, but 1,024 connections each sending a 7 MiB body would
still hold 7 GiB at once. So before a large body is read, its connection reserves its
Content-Length here and gives it back once the answer is sent (the body and what was decoded
from it are garbage by then). A reservation that does not fit waits, first come first served so
a large body is not starved by small ones, for at most a timeout; then the request is refused
(503, the SDKs retry). TCP flow control holds the waiting client's bytes meanwhile: nothing of a
waiting body is buffered by the gateway.

The synchronous core (``try_acquire``, ``release``) follows trio's ``*_nowait`` shape; the one
async method only parks. Cancellation-safe: a waiter cancelled after it was granted gives the
bytes back.
"""

from __future__ import annotations

from collections import deque

import trio


class _Waiter:
    __slots__ = ("event", "granted", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.granted = False
        self.event = trio.Event()


class ByteBudget:
    """``capacity`` bytes shared by all reservations. Invariant: 0 <= used <= capacity."""

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self.capacity = capacity
        self.used = 0
        self.granted_total = 0  # reservations ever granted (to notice that bodies came)
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, size: int) -> bool:
        """Reserve ``size`` bytes now if they fit and nobody waits before us."""
        assert 0 < size <= self.capacity
        if self._waiters or self.used + size > self.capacity:
            return False
        self.used += size
        self.granted_total += 1
        return True

    async def acquire(self, size: int, timeout_s: float) -> bool:
        """Reserve ``size`` bytes, waiting at most ``timeout_s``; False if they did not fit."""
        if self.try_acquire(size):
            await trio.lowlevel.checkpoint()
            return True
        waiter = _Waiter(size)
        self._waiters.append(waiter)
        try:
            with trio.move_on_after(timeout_s):
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # cancelled after the grant: give it back
                self.release(size)
            raise
        finally:
            if not waiter.granted:
                self._waiters.remove(waiter)
                self._grant()  # a big waiter leaving may let smaller ones behind it in
        return waiter.granted

    def release(self, size: int) -> None:
        assert 0 < size <= self.used
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0].size <= self.capacity:
            waiter = self._waiters.popleft()
            self.used += waiter.size
            self.granted_total += 1
            waiter.granted = True
            waiter.event.set()
