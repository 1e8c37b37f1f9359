"""Reading a whole stream across resharding, in lineage order.

A split or merge closes parent shards and opens children that continue them; per partition key,
a parent's records come before its children's. ``StreamReader`` reads every shard of a stream
at once (one ``ShardReader`` task each) but starts a child only after *all* its parents were
read to their end (``shard_end``), so every record of a parent is handed out before any record
of its children. The child shards come from the read answer at the end (``child_shards``), or,
should a closed shard end without naming any, from a fresh ``describe_stream``.

Which shard may be read when is decided by ``Lineage``, a small pure state machine (no I/O),
and the reading tasks only carry out its answers:

| event                      | Lineage does                                              |
|----------------------------|-----------------------------------------------------------|
| start (a describe)         | tracks the chosen shards; roots (no tracked parent) start |
| a shard reached its end    | marks it ended, tracks its children; a child starts once  |
|                            | every tracked parent of it has ended                      |
| a shard stopped at its tip | (not following) marks it stopped: its children never start|

A parent that is not tracked (expired by retention, or closed before a ``latest`` start) does
not hold its children back. Pages from all tasks meet in one unbuffered channel, so a task sends
its next page only when the caller asks for one: memory stays bounded by one page per shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Literal

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .client_api import StreamReads
from .consumer import PagedRecords, ShardReader
from .errors import InvalidArgumentError, ShardNotFoundError
from .model import Position
from .results import ChildShard, Record, ShardDescription

ShardState = Literal["waiting", "reading", "ended", "stopped"]


class Lineage:
    """Which shards a lineage-ordered reader may read now (module docstring). Pure."""

    def __init__(self, initial: Iterable[str] = ()) -> None:
        """``initial``: every shard id of the stream when reading began (closed ones too)."""
        self.initial = frozenset(initial)
        self.parents: dict[str, tuple[str, ...]] = {}
        self.state: dict[str, ShardState] = {}

    def track(self, shard_id: str, parents: Iterable[str]) -> None:
        """Know a shard (idempotent): it waits until its parents have ended. A shard of the
        initial map waits only for parents in that map (the others are gone: retention); a
        shard found later waits for all of its parents, found yet or not."""
        if shard_id not in self.state:
            kept = (p for p in parents if p and (shard_id not in self.initial or p in self.initial))
            self.parents[shard_id] = tuple(kept)
            self.state[shard_id] = "waiting"

    def _parent_ended(self, parent: str) -> bool:
        state = self.state.get(parent)
        if state is None:  # untracked: closed before a `latest` start, or not found yet
            return parent in self.initial
        return state == "ended"

    def ready(self) -> list[str]:
        """The waiting shards that may start now (marked reading), in shard-id order."""
        started = [
            shard_id
            for shard_id, state in sorted(self.state.items())
            if state == "waiting" and all(map(self._parent_ended, self.parents[shard_id]))
        ]
        for shard_id in started:
            self.state[shard_id] = "reading"
        return started

    def end(self, shard_id: str, children: Iterable[ChildShard]) -> list[str]:
        """A shard was read to its end: track its children; returns the shards that start."""
        assert self.state.get(shard_id) == "reading", (shard_id, self.state.get(shard_id))
        self.state[shard_id] = "ended"
        for child in children:
            self.track(child.shard_id, child.parent_shard_ids)
        return self.ready()

    def stop(self, shard_id: str) -> None:
        """A shard was read to its tip without ending (not following): it is done here."""
        assert self.state.get(shard_id) == "reading"
        self.state[shard_id] = "stopped"

    @property
    def ended(self) -> list[str]:
        return sorted(s for s, state in self.state.items() if state == "ended")


def initial_shards(shards: Sequence[ShardDescription], start: Position) -> list[ShardDescription]:
    """The shards a stream read from ``start`` begins with: every shard, except from ``latest``
    (only the open ones: a closed shard has nothing new). Raises InvalidArgumentError for a
    position that names one shard (a sequence number or an offset)."""
    if start.kind not in ("trim_horizon", "latest", "at_timestamp"):
        raise InvalidArgumentError(
            f"a whole-stream read starts at trim_horizon, latest or at_timestamp, not "
            f"{start.kind} (read one shard with reader())"
        )
    if start.kind == "latest":
        return [s for s in shards if s.is_open]
    return list(shards)


def child_start(start: Position) -> Position:
    """Where a child shard is read from: its beginning (it continues its parents exactly),
    or the same timestamp for a timestamp start (its first records may still be older)."""
    return start if start.kind == "at_timestamp" else Position.trim_horizon()


class StreamReader(PagedRecords):
    """Records of every shard of a stream, children after their parents; an async context
    manager (its reading tasks live inside it). Get one from ``Client.stream_reader``.

        async with client.stream_reader("orders", follow=True) as reader:
            async for record in reader:
                ...

    Without ``follow`` it ends when every shard it reached is read to its tip or end. A failed
    shard read (non-retryable, or out of retries) ends iteration and is raised when the block
    is left. ``ended_shards`` lists the shards read to their end so far.
    Entering raises: StreamNotFoundError, InvalidArgumentError (start), transport errors.
    """

    def __init__(
        self,
        client: StreamReads,
        stream: str,
        start: Position,
        *,
        follow: bool,
        wait_ms: int,
        max_bytes: int,
        deaggregate: bool = False,
    ) -> None:
        super().__init__()
        self.deaggregate = deaggregate  # KPL aggregates into user records (kpl.py)
        self.stream = stream
        self.start = start
        self.follow = follow
        self.wait_ms = wait_ms
        self.max_bytes = max_bytes
        self.lineage = Lineage()
        self._client = client
        self._stack = AsyncExitStack()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._send: MemoryObjectSendStream[list[Record]]
        self._receive: MemoryObjectReceiveStream[list[Record]]
        self._send, self._receive = anyio.create_memory_object_stream[list[Record]](0)

    @property
    def ended_shards(self) -> list[str]:
        return self.lineage.ended

    async def __aenter__(self) -> StreamReader:
        description = await self._client.describe_stream(self.stream)
        self.lineage = Lineage(s.shard_id for s in description.shards)
        chosen = initial_shards(description.shards, self.start)
        for shard in chosen:
            self.lineage.track(shard.shard_id, _parents_of(shard))
        await self._stack.__aenter__()
        try:
            self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
            with self._send:  # each task holds a clone; the last one closed ends iteration
                self._spawn(self.lineage.ready(), self.start, self._send)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stack.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        self._receive.close()
        return await self._stack.__aexit__(exc_type, exc, tb)

    def _spawn(
        self, shard_ids: list[str], start: Position, send: MemoryObjectSendStream[list[Record]]
    ) -> None:
        assert self._task_group is not None
        for shard_id in shard_ids:
            self._task_group.start_soon(self._read_shard, shard_id, start, send.clone())

    async def _read_shard(
        self, shard_id: str, start: Position, send: MemoryObjectSendStream[list[Record]]
    ) -> None:
        with send:
            reader = ShardReader(
                self._client,
                self.stream,
                shard_id,
                start,
                follow=self.follow,
                wait_ms=self.wait_ms,
                max_bytes=self.max_bytes,
                deaggregate=self.deaggregate,
            )
            try:
                while (page := await reader.read_page()) is not None:
                    await send.send(page)
            except ShardNotFoundError:
                # Gone (retention removed a closed shard): its children continue it.
                children = await self._children_from_describe(shard_id)
            else:
                if not reader.shard_end:
                    self.lineage.stop(shard_id)
                    return
                children = list(reader.child_shards)
                if not children:
                    children = await self._children_from_describe(shard_id)
            self._spawn(self.lineage.end(shard_id, children), child_start(self.start), send)

    async def _children_from_describe(self, shard_id: str) -> list[ChildShard]:
        description = await self._client.describe_stream(self.stream)
        return [
            ChildShard(s.shard_id, _parents_of(s), s.hash_key_start, s.hash_key_end)
            for s in description.shards
            if shard_id in _parents_of(s)
        ]

    async def read_page(self) -> list[Record] | None:
        """The next page of records (of one shard), or None once every shard is done.

        Must not be mixed with iteration over a partly consumed page.
        """
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            return None


def _parents_of(shard: ShardDescription) -> tuple[str, ...]:
    return tuple(p for p in (shard.parent_shard_id, shard.adjacent_parent_shard_id) if p)
