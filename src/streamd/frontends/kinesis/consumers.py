"""Registered stream consumers (enhanced fan-out), kept in the metadata store.

One key per consumer, ``consumers/<stream name>/<consumer name>``, holding a small CBOR document.
Deleting a stream removes the whole ``consumers/<stream name>/`` prefix; and because a document
also records the stream's incarnation (``stream_id``), a consumer left behind by a crash between
those two steps is never mistaken for one of a re-created stream of the same name: it is
invisible, and registering the same name again overwrites it.

Consumers go straight to ACTIVE on registration (Kinesis shows CREATING for a few seconds; the
SDKs have no consumer waiter, and a consumer here needs no provisioning), and deregistration
removes them at once (Kinesis shows DELETING for a while).

ARNs follow Kinesis: ``arn:aws:kinesis:REGION:ACCOUNT:stream/NAME/consumer/CONSUMER:SECONDS``
where SECONDS is the creation time, so a consumer re-registered under the same name gets a new
ARN and the old ARN stops working.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Final

import cbor2

from streamd_client.summary import summary

from ...meta import Compare, MetaStore
from .types import KinesisError

PREFIX: Final = "consumers/"
CONSUMERS_PER_STREAM_MAX: Final = 20
CONSUMER_NAME_RE: Final = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_CONSUMER_ARN_RE: Final = re.compile(
    r"arn:aws[a-z-]*:kinesis:([a-z0-9-]*):(\d{12}):stream/([a-zA-Z0-9_.-]{1,128})"
    r"/consumer/([a-zA-Z0-9_.-]{1,128}):([0-9]{1,20})"
)


@dataclass(frozen=True, slots=True)
class StreamConsumer:
    stream_name: str
    stream_id: str  # the stream incarnation it was registered on
    consumer_name: str
    created_ms: int
    status: str = "ACTIVE"

    @property
    def created_s(self) -> int:
        return self.created_ms // 1000

    def encode(self) -> bytes:
        return cbor2.dumps(asdict(self))

    @staticmethod
    def decode(raw: bytes) -> StreamConsumer:
        doc: dict[str, Any] = cbor2.loads(raw)
        return StreamConsumer(**doc)


@dataclass(frozen=True, slots=True)
class ConsumerArn:
    region: str
    account_id: str
    stream_name: str
    consumer_name: str
    created_s: int


def consumer_key(stream_name: str, consumer_name: str) -> str:
    return f"{PREFIX}{stream_name}/{consumer_name}"


def check_consumer_name(name: object) -> str:
    if not isinstance(name, str) or CONSUMER_NAME_RE.fullmatch(name) is None:
        raise KinesisError(
            "ValidationException",
            f"ConsumerName {summary(name, 140)} must be 1-128 characters of [a-zA-Z0-9_.-]",
        )
    return name


def parse_consumer_arn(arn: object) -> ConsumerArn:
    """Raises KinesisError(InvalidArgumentException) for anything but a consumer ARN."""
    if not isinstance(arn, str):
        raise KinesisError("ValidationException", "ConsumerARN must be a string")
    m = _CONSUMER_ARN_RE.fullmatch(arn)
    if m is None:
        raise KinesisError("InvalidArgumentException", f"malformed ConsumerARN {summary(arn, 300)}")
    region, account, stream, consumer, seconds = m.groups()
    return ConsumerArn(region, account, stream, consumer, int(seconds))


class ConsumerStore:
    """Reads and changes consumers through a MetaStore. Callers serialise registrations."""

    def __init__(self, store: MetaStore) -> None:
        self.store = store

    async def get(self, stream_name: str, stream_id: str, consumer_name: str) -> StreamConsumer:
        """Raises KinesisError(ResourceNotFoundException)."""
        kv = await self.store.get(consumer_key(stream_name, consumer_name))
        consumer = None if kv is None else StreamConsumer.decode(kv.value)
        if consumer is None or consumer.stream_id != stream_id:
            raise _not_found(stream_name, consumer_name)
        return consumer

    async def list(self, stream_name: str, stream_id: str) -> list[StreamConsumer]:
        """The stream's live consumers, sorted by name."""
        kvs = await self.store.range(f"{PREFIX}{stream_name}/")
        consumers = [StreamConsumer.decode(kv.value) for kv in kvs]
        return [c for c in consumers if c.stream_id == stream_id]

    async def register(
        self, stream_name: str, stream_id: str, consumer_name: str, now_ms: int
    ) -> StreamConsumer:
        """Raises KinesisError: ResourceInUseException (name taken), LimitExceededException."""
        key = consumer_key(stream_name, consumer_name)
        existing = await self.store.get(key)
        if existing is not None and StreamConsumer.decode(existing.value).stream_id == stream_id:
            raise KinesisError(
                "ResourceInUseException",
                f"Consumer {consumer_name} under stream {stream_name} already exists",
            )
        if len(await self.list(stream_name, stream_id)) >= CONSUMERS_PER_STREAM_MAX:
            raise KinesisError(
                "LimitExceededException",
                f"stream {stream_name} already has {CONSUMERS_PER_STREAM_MAX} consumers",
            )
        consumer = StreamConsumer(stream_name, stream_id, consumer_name, now_ms)
        revision = 0 if existing is None else existing.mod_revision  # a stale one is replaced
        if not await self.store.txn([Compare(key, revision)], puts=[(key, consumer.encode())]):
            raise KinesisError(
                "ResourceInUseException",
                f"Consumer {consumer_name} under stream {stream_name} is being registered",
            )
        return consumer

    async def deregister(self, consumer: StreamConsumer) -> None:
        """Remove exactly this registration. Raises KinesisError(ResourceNotFoundException)."""
        key = consumer_key(consumer.stream_name, consumer.consumer_name)
        kv = await self.store.get(key)
        if kv is None or StreamConsumer.decode(kv.value) != consumer:
            raise _not_found(consumer.stream_name, consumer.consumer_name)
        if not await self.store.txn([Compare(key, kv.mod_revision)], deletes=[key]):
            raise _not_found(consumer.stream_name, consumer.consumer_name)


def _not_found(stream_name: str, consumer_name: str) -> KinesisError:
    return KinesisError(
        "ResourceNotFoundException",
        f"Consumer {consumer_name} under stream {stream_name} not found",
    )
