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

from streamd_client.summary import summary

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

    def foreign_arn(self, member: str, arn: str, region: str, account: str) -> KinesisError | None:
        """The error for an ARN of another account or region (None: it is this gateway's).

        Kinesis answers ResourceNotFoundException (no such resource *here*); the message says
        which account and region this gateway serves, and the flag that sets the account."""
        if region == self.region and account == self.account_id:
            return None
        return KinesisError(
            "ResourceNotFoundException",
            f"{member} {summary(arn, 300)} names account {account} in {region}, but this gateway "
            f"serves account {self.account_id} in {self.region} (set them with "
            "`streamd serve --kinesis-account-id ID --kinesis-region R`)",
        )


Operation = Callable[[GatewayContext, dict[str, Any]], Awaitable["dict[str, Any] | Streaming"]]
