"""Per-shard requests to the shard's leader, with the retries that leader moves need.

In cluster mode each shard has one leader node, and only it takes the shard's appends and reads
(docs/protocol.md, "Client routing"). The router keeps a cache of (stream, shard id) -> the
leader's native "host:port", filled from two sources:

* ``describe_stream`` results that carry ``leader_address`` per shard (cluster nodes send it;
  the client hands every description it gets to ``learn``), and
* NOT_LEADER answers, whose ``address`` detail names the current leader.

A per-shard request goes to the cached leader's connection (from the pool, pool.py), or to the
bootstrap connection (the client's own) when nothing is cached. The embedded default names no
leaders, so the cache stays empty and every request takes the bootstrap connection, exactly one
round trip as before: the retry machinery below only runs after a cluster answer asks for it.

What happens after a failed attempt (one decision table, ``_learn``, then ``_pause_s``):

| attempt ended with               | cache                           | next attempt              |
|----------------------------------|---------------------------------|---------------------------|
| NOT_LEADER naming a new address  | shard -> that address           | at once (at most           |
|                                  |                                 | REDIRECTS_IMMEDIATE_MAX), |
|                                  |                                 | then after a backoff      |
| NOT_LEADER without (new) address | entry dropped; describe_stream  | at once if that named a   |
|                                  | refills it                      | new leader, else backoff  |
| SHARD_UNAVAILABLE                | entry dropped                   | after a backoff           |
| lost connection to a leader, or  | entry dropped (the next try     | after a backoff           |
| cannot connect to it             | asks the bootstrap node)        |                           |
| lost bootstrap connection, first | -                               | none: raised, as in the   |
| attempt                          |                                 | embedded default          |
| RequestTimeoutError, any other   | -                               | none: raised              |

Backoffs are exponential with full jitter (BACKOFF_MS_INITIAL doubling to BACKOFF_MS_MAX).
Everything, the attempts, the describes and the backoffs, fits in the request's time budget
(the client's request_timeout_s; a long-poll read adds its wait): a backoff that would leave
less than ATTEMPT_S_MIN of it is not slept, the last error is raised instead.

Writes and "may have applied": an append that ended in NOT_LEADER or a lost connection may
still have committed. Retrying it is safe for the Producer (same bytes, same producer sequence:
the new leader answers ``duplicate``), but when the retries then end with an error that says
"not stored" (SHARD_UNAVAILABLE, say), reporting that would be wrong, and a producer that
believed it would reuse the sequence number for the next batch, which the server would then
drop as a duplicate. So for writes the error raised is the earlier outcome-unknown one (same
class), its message naming how the retries ended and that final error in ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import anyio

from .connection import Connection, parse_endpoint
from .consumer import backoff_s
from .errors import (
    ConnectionLostError,
    InternalError,
    InvalidArgumentError,
    NotLeaderError,
    RequestTimeoutError,
    ShardUnavailableError,
    StreamdError,
)
from .pool import ConnectionPool
from .results import StreamDescription

LEADER_CACHE_ENTRIES_MAX: Final = 65_536  # shards whose leader we remember; oldest go first
BACKOFF_MS_INITIAL: Final = 20
BACKOFF_MS_MAX: Final = 1000
REDIRECTS_IMMEDIATE_MAX: Final = 3  # then redirects back off too: leadership may be moving
ATTEMPT_S_MIN: Final = 0.02  # no attempt after a backoff with less budget left than this

ShardKey = tuple[str, str]  # (stream, shard_id)

# Errors after which the router tries again (the rest are the caller's).
_RETRIED: Final = (NotLeaderError, ShardUnavailableError, ConnectionLostError)
# Errors after which a write may or may not have been applied.
_OUTCOME_UNKNOWN: Final = (ConnectionLostError, RequestTimeoutError, InternalError, NotLeaderError)


@dataclass
class RouterStats:
    """Counters of what the router did, for tests and metrics (read them, never write them)."""

    leader_requests: int = 0  # attempts sent to a cached leader rather than the bootstrap node
    redirects: int = 0  # NOT_LEADER answers whose address was adopted
    refreshes: int = 0  # describe_stream calls made to relearn a leader
    retries: int = 0  # attempts made again after a backoff


class _Unreachable(Exception):
    """Connecting to a leader failed: nothing was sent, so the outcome is known (not applied)."""

    def __init__(self, error: StreamdError) -> None:
        super().__init__(error.message)
        self.error = error


class Router:
    """Sends per-shard requests to leaders; the client builds one and owns its pool."""

    def __init__(
        self,
        *,
        bootstrap: Callable[[], Awaitable[Connection]],
        live_bootstrap: Callable[[], Connection | None],
        refresh: Callable[[str], Awaitable[object]],
        pool: ConnectionPool,
    ) -> None:
        """``bootstrap``: the client's connection (opening it if needed); ``live_bootstrap``:
        that connection if it is open now, else None; ``refresh``: describe a stream (the
        client's describe_stream, which hands the result to ``learn``)."""
        self.pool = pool
        self.stats = RouterStats()
        self._bootstrap = bootstrap
        self._live_bootstrap = live_bootstrap
        self._refresh = refresh
        self._leaders: dict[ShardKey, str] = {}  # Invariant: len <= LEADER_CACHE_ENTRIES_MAX

    @property
    def leader_cache(self) -> Mapping[ShardKey, str]:
        """A read-only live view: (stream, shard_id) -> leader's native "host:port"."""
        return MappingProxyType(self._leaders)

    def learn(self, description: StreamDescription) -> None:
        """Adopt the leaders a describe_stream result names (cluster nodes only send them)."""
        for shard in description.shards:
            key = (description.name, shard.shard_id)
            if shard.leader_address is not None and _valid_address(shard.leader_address):
                self._remember(key, shard.leader_address)
            else:
                self._leaders.pop(key, None)

    def _remember(self, key: ShardKey, address: str) -> None:
        self._leaders.pop(key, None)  # re-insert: dict order is then oldest-updated first
        if len(self._leaders) >= LEADER_CACHE_ENTRIES_MAX:
            del self._leaders[next(iter(self._leaders))]
        self._leaders[key] = address

    async def request(
        self,
        stream: str,
        shard_id: str,
        op: str,
        args: dict[str, Any],
        *,
        timeout_s: float,
        writes: bool,
    ) -> dict[str, Any]:
        """Send one per-shard request to the shard's leader, retrying as the module doc says
        within ``timeout_s``. ``writes``: the request stores something (see the module doc).

        Raises: the typed error the last attempt ended with (for writes, an outcome-unknown one
        if any attempt's outcome was unknown), or a transport error.
        """
        deadline = anyio.current_time() + timeout_s
        key = (stream, shard_id)
        address = self._leaders.get(key)
        try:
            return await self._send(address, op, args, deadline)
        except _Unreachable as exc:
            first: StreamdError = exc.error
            unknown = None  # nothing was sent
        except _RETRIED as exc:
            if address is None and isinstance(exc, ConnectionLostError):
                raise  # the bootstrap connection: the caller's to retry, as it always was
            first = exc
            unknown = exc if isinstance(exc, _OUTCOME_UNKNOWN) else None
        return await self._retry(key, op, args, deadline, (address, first, unknown), writes=writes)

    async def _retry(
        self,
        key: ShardKey,
        op: str,
        args: dict[str, Any],
        deadline: float,
        first: tuple[str | None, StreamdError, StreamdError | None],
        *,
        writes: bool,
    ) -> dict[str, Any]:
        """Attempts after the first, which went to ``first``'s address and failed with its
        error (and its third item when that attempt's outcome is unknown)."""
        tried, error, unknown = first
        attempt = redirects_now = 0
        while True:
            at_once = await self._learn(key, tried, error, deadline)
            if at_once and redirects_now < REDIRECTS_IMMEDIATE_MAX:
                redirects_now += 1
            else:
                attempt += 1
                pause_s = backoff_s(attempt, BACKOFF_MS_INITIAL, BACKOFF_MS_MAX)
                if anyio.current_time() + pause_s + ATTEMPT_S_MIN >= deadline:
                    raise _final(error, unknown, writes=writes)
                self.stats.retries += 1
                await anyio.sleep(pause_s)
            tried = self._leaders.get(key)
            try:
                return await self._send(tried, op, args, deadline)
            except _Unreachable as exc:
                error = exc.error
            except _RETRIED as exc:
                error = exc
                unknown = unknown or (exc if isinstance(exc, _OUTCOME_UNKNOWN) else None)
            except StreamdError as exc:
                error = exc
                break
        raise _final(error, unknown, writes=writes)

    async def _send(
        self, address: str | None, op: str, args: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        """One attempt: to ``address``'s connection, or the bootstrap one for None."""
        if address is None:
            connection = await self._bootstrap()
            return await connection.request(op, args, timeout_s=_left_s(deadline))
        live = self._live_bootstrap()
        if live is not None and live.endpoint == address:
            return await live.request(op, args, timeout_s=_left_s(deadline))
        self.stats.leader_requests += 1
        sent = False
        try:
            async with self.pool.lease(address, _left_s(deadline)) as connection:
                sent = True
                return await connection.request(op, args, timeout_s=_left_s(deadline))
        except (ConnectionLostError, InvalidArgumentError) as exc:
            if sent:
                raise
            raise _Unreachable(exc) from exc

    async def _learn(
        self, key: ShardKey, tried: str | None, error: StreamdError, deadline: float
    ) -> bool:
        """Update the cache after a failed attempt (the module doc's table); True when a new
        leader is known and worth trying at once."""
        if not isinstance(error, NotLeaderError):
            self._leaders.pop(key, None)  # unavailable or unreachable: ask the bootstrap node
            return False
        address = error.details.get("address")
        if isinstance(address, str) and address != tried and _valid_address(address):
            self._remember(key, address)
            self.stats.redirects += 1
            return True
        self._leaders.pop(key, None)
        self.stats.refreshes += 1
        with anyio.move_on_after(deadline - anyio.current_time()):
            try:
                await self._refresh(key[0])
            except StreamdError:
                pass  # the backoff and the next attempt deal with it
        fresh = self._leaders.get(key)
        return fresh is not None and fresh != tried

    async def aclose(self) -> None:
        """Close the pooled leader connections (not the bootstrap one: the client owns it)."""
        await self.pool.aclose()


def _final(error: StreamdError, unknown: StreamdError | None, *, writes: bool) -> StreamdError:
    """The error a request ends with (module doc: writes and "may have applied")."""
    if not writes or unknown is None or isinstance(error, _OUTCOME_UNKNOWN):
        return error
    combined = type(unknown)(
        f"{unknown.message}; so the write may or may not have been applied; its retries then "
        f"ended with {error.code}: {error.message}",
        **unknown.details,
    )
    combined.__cause__ = error
    return combined


def _valid_address(address: str) -> bool:
    try:
        parse_endpoint(address)
    except InvalidArgumentError:
        return False
    return "," not in address


def _left_s(deadline: float) -> float:
    return max(deadline - anyio.current_time(), 0.001)
