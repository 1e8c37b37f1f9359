"""Enhanced fan-out: stream consumers and SubscribeToShard as an event stream.

Consumers live in the metadata store (``consumers.py``). A subscription is one async generator
of encoded event-stream messages (``Streaming``): an ``initial-response`` event, then a
``SubscribeToShardEvent`` right away and one each time records commit, long-polling the engine
(``engine.read`` with ``wait_ms``) in between. When nothing arrives it sends an empty event every
``HEARTBEAT_S`` (carrying ContinuationSequenceNumber and MillisBehindLatest, as Kinesis does).
It ends after ``SUBSCRIPTION_S_MAX`` like Kinesis (the client subscribes again), at the shard's
end (a last event with ChildShards and no ContinuationSequenceNumber, which is how the KCL
recognises shard end), or with an exception event when it is taken over or its consumer is
deregistered.

ContinuationSequenceNumber is the sequence number of the last record the subscription has
passed (delivered, or skipped over by its starting position), so resubscribing with
AFTER_SEQUENCE_NUMBER (what the KCL does) continues with neither gap nor duplicate. Sequence
numbers here are dense (offset 0 is the shard's first record) so a shard that has never held a
record has no "before the first record" number: its events carry the shard's starting sequence
number, and AFTER that number would skip the first record (resubscribe with TRIM_HORIZON there).

One subscription per (consumer, shard) at a time, as in Kinesis: a second one within
``TAKEOVER_AFTER_S`` of the first gets ResourceInUseException; a later one takes over and the
first ends with a ResourceInUseException event. Subscriptions are tracked per engine, in memory
(one gateway per engine process).

Event payloads are encoded in the request's protocol: JSON (blobs base64, timestamps epoch
seconds) or CBOR (blobs as byte strings), with the gateway's own body codec (``codec.py``);
``ctx.extra["protocol"]`` names the request's protocol.
"""

from __future__ import annotations

import base64
import json
import math
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from streamd_client import batch as batchfmt
from streamd_client.errors import StreamdError
from streamd_client.model import Position, make_sequence, shard_index_of
from streamd_client.summary import summary

from ...shard import millis_behind
from . import eventstream
from .codec import Protocol as BodyProtocol
from .codec import encode_response
from .consumers import (
    ConsumerStore,
    StreamConsumer,
    check_consumer_name,
    parse_consumer_arn,
)
from .errors import (
    EXPIRED_NEXT_TOKEN,
    INTERNAL_FAILURE,
    INVALID_ARGUMENT,
    RESOURCE_IN_USE,
    RESOURCE_NOT_FOUND,
    VALIDATION,
    kinesis_error_of,
)
from .fanout_pacing import PacedSource
from .records import child_shard_doc
from .streams import resolve_stream
from .types import GatewayContext, KinesisError, Operation, Streaming

if TYPE_CHECKING:
    from ...engine import Engine
    from ...shard import ReadResult

SUBSCRIPTION_S_MAX: Final = 300.0
HEARTBEAT_S: Final = 5.0
TAKEOVER_AFTER_S: Final = 5.0
READ_BYTES_MAX: Final = 1024 * 1024
# Record data + keys per event: keeps an event (base64 in JSON) far below the SDKs' 24 MiB.
EVENT_DATA_BYTES_MAX: Final = 2 * 1024 * 1024
LIST_RESULTS_MAX: Final = 100
NEXT_TOKEN_TTL_MS: Final = 300_000


# -- per-engine state -------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Subscription:
    consumer_arn: str
    shard_id: str
    started_at: float
    # Set from outside to end the subscription: (Kinesis exception type, message).
    ended_by: tuple[str, str] | None = None
    read_scope: trio.CancelScope | None = None

    def end(self, exception_type: str, message: str) -> None:
        if self.ended_by is None:
            self.ended_by = (exception_type, message)
        if self.read_scope is not None:
            self.read_scope.cancel()


@dataclass(eq=False, slots=True)
class _Fanout:
    store: ConsumerStore
    registration_lock: trio.Lock = field(default_factory=trio.Lock)
    subscriptions: Subscriptions = field(default_factory=lambda: Subscriptions())


_FANOUTS: weakref.WeakKeyDictionary[Engine, _Fanout] = weakref.WeakKeyDictionary()


def _fanout(ctx: GatewayContext) -> _Fanout:
    state = _FANOUTS.get(ctx.engine)
    if state is None:
        state = _FANOUTS[ctx.engine] = _Fanout(ConsumerStore(ctx.engine.catalog.store))
    return state


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


# -- consumer operations ----------------------------------------------------------------------


def _consumer_arn(ctx: GatewayContext, consumer: StreamConsumer) -> str:
    stream_arn = ctx.stream_arn(consumer.stream_name)
    return f"{stream_arn}/consumer/{consumer.consumer_name}:{consumer.created_s}"


def _consumer_doc(ctx: GatewayContext, consumer: StreamConsumer) -> dict[str, Any]:
    return {
        "ConsumerName": consumer.consumer_name,
        "ConsumerARN": _consumer_arn(ctx, consumer),
        "ConsumerStatus": consumer.status,
        "ConsumerCreationTimestamp": datetime.fromtimestamp(consumer.created_ms / 1000, UTC),
    }


def _stream_id(ctx: GatewayContext, name: str) -> str:
    try:
        return ctx.engine.stream_meta(name).stream_id
    except StreamdError as exc:
        raise kinesis_error_of(exc) from None


def _stream_of_arn(ctx: GatewayContext, body: dict[str, Any]) -> str:
    if "StreamARN" not in body:
        raise KinesisError(VALIDATION, "StreamARN is required")
    return resolve_stream(ctx, {"StreamARN": body["StreamARN"]})


async def _find_consumer(ctx: GatewayContext, body: dict[str, Any]) -> StreamConsumer:
    """The consumer named by ConsumerARN, or by StreamARN + ConsumerName. Raises KinesisError."""
    store = _fanout(ctx).store
    arn = body.get("ConsumerARN")
    if arn is None:
        if "ConsumerName" not in body:
            raise KinesisError(INVALID_ARGUMENT, "give ConsumerARN, or StreamARN and ConsumerName")
        name = _stream_of_arn(ctx, body)
        consumer_name = check_consumer_name(body["ConsumerName"])
        return await store.get(name, _stream_id(ctx, name), consumer_name)
    parsed = parse_consumer_arn(arn)
    foreign = ctx.foreign_arn("ConsumerARN", arn, parsed.region, parsed.account_id)
    if foreign is not None:
        raise foreign
    consumer = await store.get(
        parsed.stream_name, _stream_id(ctx, parsed.stream_name), parsed.consumer_name
    )
    if _consumer_arn(ctx, consumer) != arn:  # another region/account, or an older registration
        raise KinesisError(RESOURCE_NOT_FOUND, f"Consumer {arn} not found")
    if "StreamARN" in body and _stream_of_arn(ctx, body) != parsed.stream_name:
        raise KinesisError(INVALID_ARGUMENT, "ConsumerARN is not of that StreamARN")
    return consumer


async def register_stream_consumer(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = _stream_of_arn(ctx, body)
    consumer_name = check_consumer_name(body.get("ConsumerName"))
    if body.get("Tags"):
        raise KinesisError(INVALID_ARGUMENT, "tags on stream consumers are not supported")
    state = _fanout(ctx)
    with trio.fail_after(30):
        async with state.registration_lock:  # the 20-consumer limit is checked, then written
            consumer = await state.store.register(
                name, _stream_id(ctx, name), consumer_name, _now_ms()
            )
    return {"Consumer": _consumer_doc(ctx, consumer)}


async def describe_stream_consumer(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    consumer = await _find_consumer(ctx, body)
    doc = _consumer_doc(ctx, consumer)
    doc["StreamARN"] = ctx.stream_arn(consumer.stream_name)
    return {"ConsumerDescription": doc}


async def deregister_stream_consumer(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    consumer = await _find_consumer(ctx, body)
    state = _fanout(ctx)
    await state.store.deregister(consumer)
    arn = _consumer_arn(ctx, consumer)
    state.subscriptions.end_consumer(arn, RESOURCE_NOT_FOUND, f"{arn} was deregistered")
    return {}


async def list_stream_consumers(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    limit = body.get("MaxResults", LIST_RESULTS_MAX)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise KinesisError(INVALID_ARGUMENT, "MaxResults must be 1..10000")
    limit = min(limit, LIST_RESULTS_MAX)
    token = body.get("NextToken")
    if token is not None:
        if "StreamCreationTimestamp" in body:
            raise KinesisError(
                INVALID_ARGUMENT,
                "NextToken and StreamCreationTimestamp exclude each other",
            )
        name, stream_id, after = _parse_next_token(token)
        if _stream_id(ctx, name) != stream_id:
            raise KinesisError(EXPIRED_NEXT_TOKEN, "the stream changed; list again")
    else:
        name = _stream_of_arn(ctx, body)
        stream_id, after = _stream_id(ctx, name), ""
        _check_creation_timestamp(ctx, name, body.get("StreamCreationTimestamp"))
    consumers = [
        c for c in await _fanout(ctx).store.list(name, stream_id) if c.consumer_name > after
    ]
    page = consumers[:limit]
    out: dict[str, Any] = {"Consumers": [_consumer_doc(ctx, c) for c in page]}
    if len(consumers) > limit:
        out["NextToken"] = _make_next_token(name, stream_id, page[-1].consumer_name)
    return out


def _check_creation_timestamp(ctx: GatewayContext, name: str, stamp: object) -> None:
    """StreamCreationTimestamp picks one incarnation of a name: a mismatch is 'not found'."""
    if stamp is None:
        return
    if not isinstance(stamp, datetime):
        raise KinesisError(VALIDATION, "StreamCreationTimestamp must be a timestamp")
    created_s = ctx.engine.stream_meta(name).created_ms // 1000
    if int(stamp.timestamp()) != created_s:
        raise KinesisError(RESOURCE_NOT_FOUND, f"no stream {name} created at {stamp}")


def _make_next_token(name: str, stream_id: str, after: str) -> str:
    doc = {"s": name, "i": stream_id, "a": after, "e": _now_ms() + NEXT_TOKEN_TTL_MS}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def _parse_next_token(token: object) -> tuple[str, str, str]:
    try:
        assert isinstance(token, str) and len(token) <= 4096
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        name, stream_id, after, expires_ms = doc["s"], doc["i"], doc["a"], doc["e"]
        assert all(isinstance(v, str) for v in (name, stream_id, after))
        assert isinstance(expires_ms, int)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError):
        raise KinesisError(INVALID_ARGUMENT, "malformed NextToken") from None
    if expires_ms < _now_ms():
        raise KinesisError(EXPIRED_NEXT_TOKEN, "NextToken expired; list again")
    return name, stream_id, after


# -- SubscribeToShard -------------------------------------------------------------------------


def _position_of(start: object) -> Position:
    """StartingPosition -> Position. Raises KinesisError."""
    if not isinstance(start, dict) or not isinstance(start.get("Type"), str):
        raise KinesisError(VALIDATION, "StartingPosition.Type is required")
    kind, sequence, stamp = start["Type"], start.get("SequenceNumber"), start.get("Timestamp")
    try:
        if kind == "TRIM_HORIZON":
            return Position.trim_horizon()
        if kind == "LATEST":
            return Position.latest()
        if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            if sequence is None:
                raise KinesisError(INVALID_ARGUMENT, f"{kind} needs a SequenceNumber")
            if kind == "AT_SEQUENCE_NUMBER":
                return Position.at_sequence(sequence)
            return Position.after_sequence(sequence)
    except StreamdError as exc:
        raise kinesis_error_of(exc) from None
    if kind == "AT_TIMESTAMP":
        if isinstance(stamp, datetime):
            return Position.at_timestamp(int(stamp.timestamp() * 1000))
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            return Position.at_timestamp(int(stamp * 1000))
        raise KinesisError(INVALID_ARGUMENT, "AT_TIMESTAMP needs a Timestamp")
    raise KinesisError(VALIDATION, f"unknown StartingPosition.Type {summary(kind, 40)}")


async def subscribe_to_shard(ctx: GatewayContext, body: dict[str, Any]) -> Streaming:
    if "ConsumerARN" not in body:
        raise KinesisError(VALIDATION, "ConsumerARN is required")
    consumer = await _find_consumer(ctx, {"ConsumerARN": body["ConsumerARN"]})
    shard_id = body.get("ShardId")
    try:
        shard_index_of(shard_id)
    except StreamdError as exc:
        raise kinesis_error_of(exc) from None
    assert isinstance(shard_id, str)
    position = _position_of(body.get("StartingPosition"))
    arn = _consumer_arn(ctx, consumer)
    events = await open_subscription(
        _fanout(ctx).subscriptions,
        PacedSource(ctx.engine, arn),  # each consumer's per-shard quota (fanout_pacing.py)
        consumer.stream_name,
        shard_id,
        arn,
        position,
        _codec(ctx),
    )
    return Streaming(events)


class ShardSource(Protocol):
    """What a subscription reads from: ``Engine.read`` (a fake one in unit tests)."""

    async def read(
        self, name: str, shard_id: str, position: Position, max_bytes: int, wait_ms: int
    ) -> ReadResult: ...


class Subscriptions:
    """The live subscriptions of one gateway, one per (consumer ARN, shard)."""

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], _Subscription] = {}

    def claim(self, arn: str, shard_id: str) -> _Subscription:
        """Raises KinesisError(ResourceInUseException) within TAKEOVER_AFTER_S of another."""
        now = trio.current_time()
        current = self._live.get((arn, shard_id))
        if current is not None and current.ended_by is None:
            if now - current.started_at < TAKEOVER_AFTER_S:
                raise KinesisError(
                    RESOURCE_IN_USE,
                    f"Another active subscription exists for consumer {arn} on shard {shard_id}",
                )
            current.end(RESOURCE_IN_USE, "a newer subscription took over this shard")
        sub = self._live[(arn, shard_id)] = _Subscription(arn, shard_id, now)
        return sub

    def release(self, sub: _Subscription) -> None:
        key = (sub.consumer_arn, sub.shard_id)
        if self._live.get(key) is sub:
            del self._live[key]

    def end_consumer(self, arn: str, exception_type: str, message: str) -> None:
        for sub in list(self._live.values()):
            if sub.consumer_arn == arn:
                sub.end(exception_type, message)

    def __len__(self) -> int:
        return len(self._live)


async def open_subscription(
    subscriptions: Subscriptions,
    source: ShardSource,
    stream: str,
    shard_id: str,
    consumer_arn: str,
    position: Position,
    codec: EventCodec,
) -> AsyncIterator[bytes]:
    """Claim the (consumer, shard) slot, read once, and return the event generator.

    The first read happens before the answer, so a bad shard or position is a plain HTTP error
    rather than an event, and LATEST is fixed now: records committed after this point are
    delivered. Raises KinesisError.
    """
    sub = subscriptions.claim(consumer_arn, shard_id)
    try:
        first = await source.read(stream, shard_id, position, READ_BYTES_MAX, 0)
    except StreamdError as exc:
        subscriptions.release(sub)
        raise kinesis_error_of(exc) from None
    except BaseException:
        subscriptions.release(sub)
        raise
    reader = _ShardReader(source, stream, shard_id, shard_index_of(shard_id), sub)
    return _EventIterator(_events(subscriptions, sub, reader, first, codec), subscriptions, sub)


class _EventIterator:
    """The event generator, plus: closing it frees the slot even if it never started (an
    unstarted async generator's ``finally`` never runs)."""

    def __init__(
        self, events: AsyncGenerator[bytes, None], subscriptions: Subscriptions, sub: _Subscription
    ) -> None:
        self._events = events
        self._subscriptions = subscriptions
        self._sub = sub

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._subscriptions.release(self._sub)


class _ShardReader:
    """Long-polls one shard for a subscription; ``read`` is cancellable by the subscription."""

    def __init__(
        self, source: ShardSource, stream: str, shard_id: str, shard_index: int, sub: _Subscription
    ) -> None:
        self.source = source
        self.stream = stream
        self.shard_id = shard_id
        self.shard_index = shard_index
        self.sub = sub

    async def read(self, offset: int, wait_s: float) -> ReadResult | None:
        """The next read from ``offset``, or None if the subscription was ended meanwhile."""
        scope = self.sub.read_scope = trio.CancelScope()
        if self.sub.ended_by is not None:
            return None
        try:
            with scope:
                return await self.source.read(
                    self.stream,
                    self.shard_id,
                    Position.at_offset(offset),
                    READ_BYTES_MAX,
                    max(0, math.ceil(wait_s * 1000)),
                )
        finally:
            self.sub.read_scope = None
        return None  # cancelled by _Subscription.end


async def _events(
    subscriptions: Subscriptions,
    sub: _Subscription,
    reader: _ShardReader,
    first: ReadResult,
    codec: EventCodec,
) -> AsyncGenerator[bytes, None]:
    """The subscription's messages. Never yields inside a cancel scope (trio's rule)."""
    try:
        yield codec.initial_response()
        result: ReadResult | None = first
        deadline = sub.started_at + SUBSCRIPTION_S_MAX
        last_sent = -HEARTBEAT_S  # the first event goes out at once, records or not
        while True:
            if sub.ended_by is not None or result is None:
                kind, message = sub.ended_by or (INTERNAL_FAILURE, "subscription ended")
                yield codec.exception(kind, message)
                return
            now = trio.current_time()
            try:
                events, at_end = render_events(result, reader.shard_index, codec)
            except KinesisError as exc:  # a stored batch failed its CRC: never served
                yield codec.exception(exc.type_name, exc.message)
                return
            if events or at_end or now - last_sent >= HEARTBEAT_S:
                for event in events or [codec.event(_heartbeat(result, reader.shard_index))]:
                    yield event
                last_sent = trio.current_time()
            if at_end or trio.current_time() >= deadline:
                return
            now = trio.current_time()
            wait_s = min(HEARTBEAT_S - (now - last_sent), deadline - now)
            try:
                result = await reader.read(result.next_offset, wait_s)
            except StreamdError as exc:
                error = kinesis_error_of(exc)
                yield codec.exception(error.type_name, error.message)
                return
    finally:
        subscriptions.release(sub)


def _continuation(shard_index: int, next_offset: int) -> str:
    return make_sequence(shard_index, max(0, next_offset - 1))


def _heartbeat(result: ReadResult, shard_index: int) -> dict[str, Any]:
    return {
        "Records": [],
        "ContinuationSequenceNumber": _continuation(shard_index, result.next_offset),
        "MillisBehindLatest": result.millis_behind,
    }


def render_events(
    result: ReadResult, shard_index: int, codec: EventCodec
) -> tuple[list[bytes], bool]:
    """Encoded SubscribeToShardEvents for one read (empty if it has no records and is not the
    shard's end), and whether the shard's end was reached. Raises KinesisError on a corrupt
    stored batch.

    Each event's MillisBehindLatest is its own last record's lag behind the shard's newest
    record (``result.tip_arrival_ms``): a read split into several events is not all at the lag
    of its last batch, and only an event that reaches the tip says 0."""
    events: list[bytes] = []
    records: list[dict[str, Any]] = []
    size = 0
    last_offset = result.start_offset - 1
    last_ms = 0

    def behind() -> int:
        if not records:
            return result.millis_behind
        return millis_behind(result.tip_arrival_ms, last_ms, last_offset + 1, result.high_watermark)

    for raw in result.batches:
        try:
            header = batchfmt.parse_header(raw)
            columns = batchfmt.decode_records(raw, header)
        except StreamdError as exc:
            raise kinesis_error_of(exc) from None
        arrival = datetime.fromtimestamp(header.last_arrival_ms / 1000, UTC)
        for i, (key, data) in enumerate(zip(columns.keys, columns.datas, strict=True)):
            offset = header.base_offset + i
            if offset < result.start_offset or offset >= result.next_offset:
                continue  # a stored batch may start before the position asked for
            if records and size + len(data) + len(key) > EVENT_DATA_BYTES_MAX:
                doc = _records_event(records, shard_index, last_offset, behind())
                events.append(codec.event(doc))
                records, size = [], 0
            records.append(
                {
                    "SequenceNumber": make_sequence(shard_index, offset),
                    "ApproximateArrivalTimestamp": arrival,
                    "Data": data,
                    "PartitionKey": key,
                }
            )
            size += len(data) + len(key)
            last_offset, last_ms = offset, header.last_arrival_ms
    at_end = result.shard_end
    if records or at_end:
        doc = _records_event(records, shard_index, result.next_offset - 1, behind())
        if at_end:
            del doc["ContinuationSequenceNumber"]
            doc["ChildShards"] = [child_shard_doc(c) for c in result.child_shards]
        events.append(codec.event(doc))
    return events, at_end


def _records_event(
    records: list[dict[str, Any]], shard_index: int, last_offset: int, behind_ms: int
) -> dict[str, Any]:
    return {
        "Records": records,
        "ContinuationSequenceNumber": make_sequence(shard_index, max(0, last_offset)),
        "MillisBehindLatest": behind_ms,
    }


# -- event payload codecs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventCodec:
    """Encodes event payloads in the request's protocol and frames them as messages."""

    protocol: BodyProtocol

    def encode(self, doc: dict[str, Any]) -> bytes:
        return encode_response(self.protocol, doc)

    def initial_response(self) -> bytes:
        return eventstream.initial_response(self.encode({}), self.protocol.value)

    def event(self, doc: dict[str, Any]) -> bytes:
        payload = self.encode(doc)
        return eventstream.event_message("SubscribeToShardEvent", payload, self.protocol.value)

    def exception(self, exception_type: str, message: str) -> bytes:
        payload = self.encode({"message": message})
        return eventstream.exception_message(exception_type, payload, self.protocol.value)


def _codec(ctx: GatewayContext) -> EventCodec:
    protocol = ctx.extra.get("protocol")
    return EventCodec(protocol if isinstance(protocol, BodyProtocol) else BodyProtocol.JSON)


FANOUT_OPERATIONS: dict[str, Operation] = {
    "RegisterStreamConsumer": register_stream_consumer,
    "DescribeStreamConsumer": describe_stream_consumer,
    "ListStreamConsumers": list_stream_consumers,
    "DeregisterStreamConsumer": deregister_stream_consumer,
    "SubscribeToShard": subscribe_to_shard,
}
