"""Connections to cluster nodes by native address: opened on demand, bounded, idle ones closed.

The router (router.py) sends a shard's appends and reads to the node that leads it; this pool
holds one multiplexed ``Connection`` per such node, so many shards led by one node share one
connection, as all requests to the bootstrap node share the client's. It only exists in cluster
mode: an embedded server names no leaders, and then the pool never opens anything.

How it works: ``lease(address)`` yields the live connection to that address, opening one if
there is none or the old one broke (an ``opening`` event lets concurrent callers wait for one
open instead of racing to open several). While leased, an entry counts as in use; one that is
not in use and was last used ``idle_timeout_s`` ago is closed by a sweeper task (started with
the first connection, in the client's task group, cancelled by ``aclose``). At
``connections_max`` the least recently used idle connection is closed to make room; when every
connection is busy, opening another raises LimitExceededError.

Connections run in the client's task group (as the bootstrap connection does), so leaving
``async with connect(...)`` ends all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import anyio
import anyio.abc

from .connection import Connection, open_connection
from .errors import LimitExceededError, RequestTimeoutError
from .security import Security

CONNECTIONS_MAX_DEFAULT: Final = 64  # nodes one client talks to at once
IDLE_TIMEOUT_S_DEFAULT: Final = 60.0


@dataclass
class PoolStats:
    """Counters of the pool's life, for tests and metrics (read them, never write them)."""

    opened: int = 0  # connections opened to nodes
    closed_idle: int = 0  # closed by the sweeper or to make room


@dataclass
class _Entry:
    connection: Connection
    last_used_s: float
    in_use: int = 0  # Invariant: >= 0; the number of open leases


@dataclass
class ConnectionPool:
    """Node connections keyed by "host:port"; get one with ``lease``. Not shared across loops."""

    task_group: anyio.abc.TaskGroup
    connect_timeout_s: float
    request_timeout_s: float
    requests_in_flight_max: int
    connections_max: int = CONNECTIONS_MAX_DEFAULT
    idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT
    security: Security = field(default_factory=Security)  # TLS and credentials, as the client's
    stats: PoolStats = field(default_factory=PoolStats)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _opening: dict[str, anyio.Event] = field(default_factory=dict)
    _sweeper: anyio.CancelScope | None = None
    _closed: bool = False

    def __post_init__(self) -> None:
        assert self.connections_max >= 1 and self.idle_timeout_s > 0

    @property
    def addresses(self) -> list[str]:
        """The addresses with a connection in the pool (live or not yet noticed broken)."""
        return list(self._entries)

    @asynccontextmanager
    async def lease(self, address: str, timeout_s: float) -> AsyncIterator[Connection]:
        """The live connection to ``address``, opened within ``timeout_s`` if needed.

        Raises: ConnectionLostError (cannot connect), RequestTimeoutError, ProtocolError,
        UnsupportedVersionError, InvalidArgumentError (address), LimitExceededError (every
        pooled connection is busy), anyio.ClosedResourceError (the pool is closed).
        """
        entry = await self._entry(address, timeout_s)
        entry.in_use += 1
        try:
            yield entry.connection
        finally:
            entry.in_use -= 1
            entry.last_used_s = anyio.current_time()

    async def _entry(self, address: str, timeout_s: float) -> _Entry:
        deadline = anyio.current_time() + timeout_s
        while True:
            if self._closed:
                raise anyio.ClosedResourceError("the client is closed")
            entry = self._entries.get(address)
            if entry is not None and not entry.connection.is_broken:
                return entry
            opening = self._opening.get(address)
            if opening is None:
                break
            with anyio.move_on_after(deadline - anyio.current_time()):
                await opening.wait()  # the opener is bounded by its own timeout
            if anyio.current_time() >= deadline:
                raise RequestTimeoutError(f"no connection to {address} within {timeout_s} s")
        return await self._open(address, deadline)

    async def _open(self, address: str, deadline: float) -> _Entry:
        event = self._opening[address] = anyio.Event()
        try:
            self._entries.pop(address, None)  # a broken one: its tasks end on their own
            await self._make_room()
            connection = await open_connection(
                self.task_group,
                address,
                connect_timeout_s=_left_s(
                    min(anyio.current_time() + self.connect_timeout_s, deadline)
                ),
                request_timeout_s=self.request_timeout_s,
                requests_in_flight_max=self.requests_in_flight_max,
                security=self.security,
            )
            if self._closed:  # closed while we connected: do not leave it running
                await connection.aclose()
                raise anyio.ClosedResourceError("the client is closed")
            entry = self._entries[address] = _Entry(connection, anyio.current_time())
            self.stats.opened += 1
            if self._sweeper is None:
                self._sweeper = anyio.CancelScope()
                self.task_group.start_soon(self._sweep_forever, self._sweeper)
            return entry
        finally:
            del self._opening[address]
            event.set()

    async def _make_room(self) -> None:
        for address, entry in list(self._entries.items()):
            if entry.connection.is_broken:
                del self._entries[address]
        if len(self._entries) < self.connections_max:
            return
        idle = [(e.last_used_s, a) for a, e in self._entries.items() if e.in_use == 0]
        if not idle:
            raise LimitExceededError(
                f"all {self.connections_max} node connections are busy (connections_max)"
            )
        _, address = min(idle)
        await self._close(address, self._entries[address])

    async def _close(self, address: str, entry: _Entry) -> None:
        if self._entries.get(address) is entry:
            del self._entries[address]
            self.stats.closed_idle += 1
            await entry.connection.aclose()

    async def _sweep_forever(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self.idle_timeout_s / 2)
                await self.close_idle()

    async def close_idle(self) -> None:
        """Close every connection that is not in use and was last used idle_timeout_s ago."""
        now = anyio.current_time()
        for address, entry in list(self._entries.items()):
            if entry.in_use > 0 or self._entries.get(address) is not entry:
                continue  # busy, or replaced while an earlier close was waited for
            if entry.connection.is_broken:
                del self._entries[address]
            elif now - entry.last_used_s >= self.idle_timeout_s:
                await self._close(address, entry)

    async def aclose(self) -> None:
        """Close every connection and stop the sweeper; leases in use fail with
        ConnectionLostError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.connection.aclose()


def _left_s(deadline: float) -> float:
    return max(deadline - anyio.current_time(), 0.001)
