"""What the parts of the client library need from a client, as small Protocols.

The producer, the readers and the group worker take "something that can append, read,
describe, or send a raw request" rather than the ``Client`` class itself, so none of them imports
client.py (which builds them: the arrows point one way, client -> parts, and there is no import
circle, not even a TYPE_CHECKING one). ``Client`` satisfies every protocol here; a test double
needs only the methods its protocol names.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from .model import Position
from .results import AppendResult, ReadResult, StreamDescription

READ_BYTES_MAX_DEFAULT: Final = 1 << 20


class Caller(Protocol):
    """Sends one raw request (docs/protocol.md) and returns its result map."""

    async def call(
        self, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]: ...


class Describer(Protocol):
    """Describes a stream (its shards, their ranges and lineage)."""

    async def describe_stream(self, name: str) -> StreamDescription: ...


class Appender(Describer, Protocol):
    """What a producer needs: appending whole batches, and the stream's shard map."""

    async def append_batch(self, stream: str, shard_id: str, batch: bytes) -> AppendResult: ...


class ShardReads(Protocol):
    """Reads committed records of one shard."""

    async def read(
        self,
        stream: str,
        shard_id: str,
        position: Position,
        *,
        max_bytes: int = READ_BYTES_MAX_DEFAULT,
        wait_ms: int = 0,
        limit: int | None = None,
    ) -> ReadResult: ...


class StreamReads(Describer, ShardReads, Protocol):
    """What a stream reader needs: the shard map and per-shard reads."""


class GroupClient(Caller, ShardReads, Protocol):
    """What a group worker needs: the group requests, and reads of its leased shards."""
