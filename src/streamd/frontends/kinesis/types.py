"""Types shared by the Kinesis gateway's modules: the request context, errors, streaming answers.

An operation is ``async def op(ctx: GatewayContext, body: dict) -> dict | Streaming``: ``body`` is
the decoded request (JSON or CBOR, blobs already bytes, timestamps already datetimes), the
returned map is encoded back in the request's protocol. ``Streaming`` answers (SubscribeToShard)
send an AWS event stream: an initial-response event, then events until the iterator ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...engine import Engine


class KinesisError(Exception):
    """An error answered as the SDKs parse it: ``__type`` name, message and HTTP status."""

    def __init__(self, type_name: str, message: str, status: int = 400) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Streaming:
    """An event-stream answer: each item of ``events`` is one encoded event-stream message."""

    events: AsyncIterator[bytes]
    content_type: str = "application/vnd.amazon.eventstream"


@dataclass(slots=True)
class GatewayContext:
    engine: Engine
    region: str = "us-east-1"
    account_id: str = "000000000000"
    # Secret for iterator tokens: iterators are opaque, tamper-evident and expire.
    iterator_key: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def stream_arn(self, name: str) -> str:
        return f"arn:aws:kinesis:{self.region}:{self.account_id}:stream/{name}"


Operation = Callable[[GatewayContext, dict[str, Any]], Awaitable["dict[str, Any] | Streaming"]]
