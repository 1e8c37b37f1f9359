"""Record operations: PutRecord, PutRecords, GetShardIterator, GetRecords.

Writes go through ``engine.put_records`` (the same routing, validation limits and group commit
as the native protocol); reads through ``engine.read`` and the client library's own batch
decoder (``decode_read``), so there is one definition of what a read returns.

Iterator positions are resolved when the iterator is made: TRIM_HORIZON is offset 0 (a read
clamps it to the shard's current horizon, so it follows retention like Kinesis's), LATEST is the
high watermark now, AT_TIMESTAMP the first offset at or after the time, and the sequence-number
types the offset inside the number (after checking it belongs to this shard and is not beyond
its tip).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, Final

from streamd_client.consumer import decode_read
from streamd_client.errors import StreamdError
from streamd_client.model import (
    PUT_RECORDS_COUNT_MAX,
    RECORD_DATA_BYTES_CEILING,
    Position,
    check_partition_key,
    hash_bytes_of,
    parse_explicit_hash_key,
    parse_sequence,
    put_records_bytes_max,
    shard_id_of,
)
from streamd_client.results import ChildShard, RawRead
from streamd_client.summary import summary

from ...catalog import ShardMeta, StreamMeta
from ...routing import RecordIn
from ...shard import millis_behind, now_ms
from .args import opt_int, opt_str, req_str
from .errors import (
    EXPIRED_ITERATOR,
    RECORD_INTERNAL_FAILURE,
    THROUGHPUT_EXCEEDED,
    invalid_argument,
    kinesis_error_of,
    kinesis_name_of,
    not_found,
    validation,
)
from .iterators import (
    IteratorError,
    IteratorExpiredError,
    ShardIterator,
    decode_iterator,
    encode_iterator,
)
from .streams import encryption_type, resolve_stream
from .types import GatewayContext, KinesisError, Operation

GET_RECORDS_LIMIT_MAX: Final = 10_000
GET_RECORDS_BYTES_MAX: Final = 10 * 1024 * 1024
_SEQUENCE_FOR_ORDERING_RE: Final = re.compile(r"0|[1-9]\d{0,128}")
_ITERATOR_TYPES: Final = (
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "TRIM_HORIZON",
    "LATEST",
    "AT_TIMESTAMP",
)


# -- writes ---------------------------------------------------------------------------------------


def _record_in(entry: dict[str, Any], where: str, limit: int) -> RecordIn:
    """One record of a request; ``limit``: the stream's max record size (UpdateMaxRecordSize)."""
    data = entry.get("Data")
    key = entry.get("PartitionKey")
    if (  # the common case, checked inline: PutRecords spends its time here
        type(data) is bytes
        and type(key) is str
        and 1 <= len(key) <= 256
        and len(data) <= limit
        and entry.get("ExplicitHashKey") is None
    ):
        return RecordIn(key, hashlib.md5(key.encode()).digest(), data)
    if not isinstance(data, bytes):
        raise validation(f"{where}Data must not be null and must be a blob")
    if len(data) > limit:
        raise validation(
            f"1 validation error detected: Value at '{where}data' failed to satisfy "
            f"constraint: Member must have length less than or equal to {limit} (the "
            "stream's max record size; UpdateMaxRecordSize raises it up to "
            f"{RECORD_DATA_BYTES_CEILING})"
        )
    key = req_str(entry, "PartitionKey", max_len=256)
    check_partition_key(key)
    explicit = opt_str(entry, "ExplicitHashKey", max_len=39)
    if explicit is None:
        return RecordIn(key, hash_bytes_of(key), data)
    if not (explicit.isascii() and explicit.isdigit()):
        raise validation(f"ExplicitHashKey {summary(explicit)} must match 0|([1-9]\\d{{0,38}})")
    try:
        hash_key = parse_explicit_hash_key(explicit)
    except StreamdError as exc:
        raise invalid_argument(exc.message) from None
    return RecordIn(key, hash_key.to_bytes(16, "big"), data)


async def put_record(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    record = _record_in(body, "", ctx.engine.stream_meta(name).max_record_bytes)
    ordering = opt_str(body, "SequenceNumberForOrdering", max_len=129)
    if ordering is not None and not _SEQUENCE_FOR_ORDERING_RE.fullmatch(ordering):
        raise validation("SequenceNumberForOrdering must match 0|([1-9]\\d{0,128})")
    # Per-key order already holds (one shard, one commit queue); the hint needs nothing more.
    (outcome,) = await ctx.engine.put_records(name, [record])
    if outcome.error is not None:
        raise kinesis_error_of(outcome.error)
    return {
        "ShardId": outcome.shard_id,
        "SequenceNumber": outcome.sequence,
        "EncryptionType": encryption_type(ctx.engine.stream_meta(name)),
    }


async def put_records(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    entries = body.get("Records")
    if not isinstance(entries, list) or not 1 <= len(entries) <= PUT_RECORDS_COUNT_MAX:
        count = len(entries) if isinstance(entries, list) else entries
        raise validation(
            f"1 validation error detected: Value {summary(count, 40)} at 'records' failed to "
            f"satisfy constraint: Member must have length between 1 and {PUT_RECORDS_COUNT_MAX}"
        )
    limit = ctx.engine.stream_meta(name).max_record_bytes
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise validation(f"Records.{i + 1} must be a structure")
        records.append(_record_in(entry, f"records.{i + 1}.member.", limit))
    total = sum(len(r.data) + len(r.partition_key.encode()) for r in records)
    request_bytes_max = put_records_bytes_max(limit)
    if total > request_bytes_max:
        raise invalid_argument(
            f"Records size exceeds {request_bytes_max // (1024 * 1024)} MB limit ({total} bytes)"
        )
    outcomes = await ctx.engine.put_records(name, records)
    results: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.error is None:
            results.append({"ShardId": outcome.shard_id, "SequenceNumber": outcome.sequence})
            continue
        # Kinesis reports only these two per record: retry-with-backoff or a server fault.
        code, _ = kinesis_name_of(outcome.error)
        if code != THROUGHPUT_EXCEEDED:
            code = RECORD_INTERNAL_FAILURE
        results.append({"ErrorCode": code, "ErrorMessage": outcome.error.message})
    return {
        "FailedRecordCount": sum(1 for o in outcomes if o.error is not None),
        "Records": results,
        "EncryptionType": encryption_type(ctx.engine.stream_meta(name)),
    }


def child_shard_doc(child: ChildShard) -> dict[str, Any]:
    """A ChildShards entry (GetRecords at a shard's end, SubscribeToShard's last event)."""
    return {
        "ShardId": child.shard_id,
        "ParentShards": list(child.parent_shard_ids),
        "HashKeyRange": {
            "StartingHashKey": str(child.hash_key_start),
            "EndingHashKey": str(child.hash_key_end),
        },
    }


# -- iterators ------------------------------------------------------------------------------------


def _shard(meta: StreamMeta, shard_id: str, ctx: GatewayContext) -> ShardMeta:
    shard = meta.shard(shard_id)
    if shard is None:
        raise not_found(
            f"Shard {shard_id} in stream {meta.name} under account {ctx.account_id} does not exist"
        )
    return shard


async def _offset_of(
    ctx: GatewayContext, meta: StreamMeta, shard: ShardMeta, kind: str, body: dict[str, Any]
) -> int:
    engine = ctx.engine
    if kind == "TRIM_HORIZON":
        return 0  # reads clamp it to the horizon at that time
    if kind == "AT_TIMESTAMP":
        when = body.get("Timestamp")
        if not isinstance(when, datetime):
            raise invalid_argument("AT_TIMESTAMP needs a Timestamp")
        ms = max(0, int(when.timestamp() * 1000))
        read = await engine.read(meta.name, shard.shard_id, Position.at_timestamp(ms), 1, 0)
        return read.start_offset
    latest = await engine.read(meta.name, shard.shard_id, Position.latest(), 1, 0)
    if kind == "LATEST":
        return latest.start_offset
    sequence = opt_str(body, "StartingSequenceNumber", max_len=128)
    if sequence is None:
        raise invalid_argument(f"{kind} needs a StartingSequenceNumber")
    try:
        index, offset = parse_sequence(sequence)
    except StreamdError:
        raise invalid_argument(f"StartingSequenceNumber {sequence} is invalid") from None
    if index != shard.index:
        raise invalid_argument(
            f"StartingSequenceNumber {sequence} used in GetShardIterator on shard "
            f"{shard.shard_id} in stream {meta.name} under account {ctx.account_id} is invalid "
            "because it did not come from this stream."
        )
    offset += kind == "AFTER_SEQUENCE_NUMBER"
    if offset > latest.high_watermark:
        raise invalid_argument(
            f"StartingSequenceNumber {sequence} lies beyond the end of shard {shard.shard_id}"
        )
    return offset


async def get_shard_iterator(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    shard_id = req_str(body, "ShardId", max_len=128)
    kind = body.get("ShardIteratorType")
    if kind not in _ITERATOR_TYPES:
        raise validation(
            f"1 validation error detected: Value {summary(kind)} at 'shardIteratorType' failed to "
            "satisfy constraint: Member must satisfy enum value set: "
            f"[{', '.join(_ITERATOR_TYPES)}]"
        )
    meta = ctx.engine.stream_meta(name)
    shard = _shard(meta, shard_id, ctx)
    offset = await _offset_of(ctx, meta, shard, kind, body)
    token = ShardIterator(name, meta.stream_id, shard.index, offset, now_ms())
    return {"ShardIterator": encode_iterator(ctx.iterator_key, token)}


def _decode(ctx: GatewayContext, token: str) -> ShardIterator:
    try:
        return decode_iterator(ctx.iterator_key, token, now_ms())
    except IteratorExpiredError as exc:
        raise KinesisError(EXPIRED_ITERATOR, str(exc), 400) from None
    except IteratorError:
        raise invalid_argument("Invalid ShardIterator.") from None


async def get_records(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    token = req_str(body, "ShardIterator", max_len=512)
    limit = opt_int(body, "Limit", low=1, high=GET_RECORDS_LIMIT_MAX) or GET_RECORDS_LIMIT_MAX
    it = _decode(ctx, token)
    if opt_str(body, "StreamARN", max_len=2048) is not None:
        if resolve_stream(ctx, body) != it.stream:
            raise invalid_argument("StreamARN does not name the stream of the ShardIterator")
    shard_id = shard_id_of(it.shard_index)
    meta = ctx.engine.stream_meta(it.stream)
    if meta.stream_id != it.stream_id:
        raise not_found(f"Shard {shard_id} in stream {it.stream} no longer exists (re-created)")
    read = await ctx.engine.read(  # over the shard's read quota: THROTTLED (docs/kinesis.md)
        it.stream, shard_id, Position.at_offset(it.offset), GET_RECORDS_BYTES_MAX, 0, metered=True
    )
    raw = RawRead(
        read.batches,
        read.start_offset,
        read.next_offset,
        read.high_watermark,
        read.millis_behind,
        read.shard_end,
        read.child_shards,
    )
    page = decode_read(raw, shard_id, it.shard_index, limit)
    # The stream's setting now: a record stored before a Start/Stop keeps the other one on
    # disk (each batch names its key), which this per-record field does not tell apart.
    encryption = encryption_type(meta)
    next_offset = page.next_position.offset
    assert next_offset is not None
    behind = read.millis_behind  # right for the whole read; a Limit may return less of it
    if page.records:
        last_ms = page.records[-1].arrival_ms
        behind = millis_behind(read.tip_arrival_ms, last_ms, next_offset, read.high_watermark)
    answer: dict[str, Any] = {
        "Records": [
            {
                "SequenceNumber": r.sequence_number,
                "ApproximateArrivalTimestamp": datetime.fromtimestamp(r.arrival_ms / 1000, UTC),
                "Data": r.data,
                "PartitionKey": r.partition_key,
                "EncryptionType": encryption,
            }
            for r in page.records
        ],
        "MillisBehindLatest": behind,
    }
    if page.shard_end:  # no NextShardIterator: the shard has ended
        answer["ChildShards"] = [child_shard_doc(c) for c in page.child_shards]
        return answer
    following = ShardIterator(it.stream, it.stream_id, it.shard_index, next_offset, now_ms())
    answer["NextShardIterator"] = encode_iterator(ctx.iterator_key, following)
    return answer


# Their answers hold no None member anywhere, so the encoder need not walk them to drop any.
NONE_FREE_OPERATIONS: Final = frozenset({"PutRecord", "PutRecords", "GetRecords"})

RECORD_OPERATIONS: Final[dict[str, Operation]] = {
    "PutRecord": put_record,
    "PutRecords": put_records,
    "GetShardIterator": get_shard_iterator,
    "GetRecords": get_records,
}
