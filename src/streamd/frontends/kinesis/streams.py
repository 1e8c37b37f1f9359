"""Stream-level Kinesis operations: create, delete, describe, list, shards, retention, tags,
resharding and limits, each a thin translation onto the engine.

``resolve_stream`` is the one place a request's StreamName / StreamARN pair becomes a name: both
may be given and must then agree; an ARN must be a stream ARN of this gateway's region and
account (another region or account holds no stream here: ResourceNotFoundException).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any, Final

from streamd_client.model import (
    HASH_KEY_MAX,
    RETENTION_HOURS_DEFAULT,
    SHARD_COUNT_MAX,
    make_sequence,
    parse_explicit_hash_key,
)
from streamd_client.summary import summary

from ...catalog import ShardMeta, StreamMeta, StreamMode
from .args import (
    opt_bool,
    opt_enum,
    opt_int,
    opt_map,
    opt_str,
    req_int,
    req_str,
    str_list,
    str_map,
)
from .consumers import ConsumerStore
from .errors import in_use, invalid_argument, not_found, validation
from .types import GatewayContext, Operation

STREAM_ARN_RE: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:kinesis:([a-z0-9-]+):(\d{12}):stream/([a-zA-Z0-9_.-]{1,128})"
)
ON_DEMAND_SHARD_COUNT: Final = 4  # what Kinesis gives an on-demand stream at first
LIST_LIMIT_DEFAULT: Final = 100
LIST_LIMIT_MAX: Final = 10_000
LIST_SHARDS_DEFAULT: Final = 1000
LIST_SHARDS_PAGE_MAX: Final = 1000  # Kinesis: MaxResults over 1000 still returns at most 1000
TAGS_PER_CALL_MAX: Final = 200  # botocore's TagMap (a stream holds 50: the engine's limit)
TAG_KEYS_PER_CALL_MAX: Final = 50  # botocore's TagKeyList
TAG_LIST_LIMIT_DEFAULT: Final = 50
SHARD_FILTERS: Final = (
    "AFTER_SHARD_ID",
    "AT_TRIM_HORIZON",
    "FROM_TRIM_HORIZON",
    "AT_LATEST",
    "AT_TIMESTAMP",
    "FROM_TIMESTAMP",
)


# -- naming ---------------------------------------------------------------------------------------


def _name_of_arn(ctx: GatewayContext, arn: str, member: str) -> str:
    m = STREAM_ARN_RE.fullmatch(arn)
    if m is None:
        raise invalid_argument(f"{member} {summary(arn, 300)} is not a Kinesis stream ARN")
    region, account, name = m.groups()
    foreign = ctx.foreign_arn(member, arn, region, account)
    if foreign is not None:
        raise foreign
    return name


def resolve_stream(ctx: GatewayContext, body: dict[str, Any]) -> str:
    """The stream a request names by StreamName and/or StreamARN. Raises KinesisError."""
    name = opt_str(body, "StreamName", max_len=128)
    arn = opt_str(body, "StreamARN", max_len=2048)
    if arn is not None:
        arn_name = _name_of_arn(ctx, arn, "StreamARN")
        if name is not None and name != arn_name:
            raise invalid_argument(
                f"StreamName {summary(name, 140)} and StreamARN {summary(arn, 300)} "
                "name different streams"
            )
        return arn_name
    if name is None:
        raise invalid_argument("Either StreamName or StreamARN must be provided")
    return name


def resource_stream(ctx: GatewayContext, body: dict[str, Any]) -> str:
    arn = req_str(body, "ResourceARN", max_len=2048)
    if "/consumer/" in arn:
        raise invalid_argument("tags on stream consumers are not supported by streamd")
    return _name_of_arn(ctx, arn, "ResourceARN")


# -- shapes ---------------------------------------------------------------------------------------


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def shard_shape(shard: ShardMeta) -> dict[str, Any]:
    # Kinesis's EndingSequenceNumber is the last record's own number (the native protocol's
    # ending_sequence is one past it); an empty closed shard ends at its starting number.
    ending = (
        None
        if shard.ending_offset is None
        else make_sequence(shard.index, max(0, shard.ending_offset - 1))
    )
    return {
        "ShardId": shard.shard_id,
        "ParentShardId": shard.parent_shard_id,
        "AdjacentParentShardId": shard.adjacent_parent_shard_id,
        "HashKeyRange": {
            "StartingHashKey": str(shard.hash_key_start),
            "EndingHashKey": str(shard.hash_key_end),
        },
        "SequenceNumberRange": {
            "StartingSequenceNumber": make_sequence(shard.index, 0),
            "EndingSequenceNumber": ending,
        },
    }


def _summary(ctx: GatewayContext, meta: StreamMeta) -> dict[str, Any]:
    return {
        "StreamName": meta.name,
        "StreamARN": ctx.stream_arn(meta.name),
        "StreamStatus": ctx.engine.status_of(meta.name),
        "StreamModeDetails": {"StreamMode": meta.mode},
        "StreamCreationTimestamp": _ts(meta.created_ms),
    }


def _sorted_shards(meta: StreamMeta) -> list[ShardMeta]:
    return sorted(meta.shards, key=lambda s: s.shard_id)


# -- create, delete, describe, list ----------------------------------------------------------------


async def create_stream(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = req_str(body, "StreamName", max_len=128)
    shards = opt_int(body, "ShardCount", low=1, high=SHARD_COUNT_MAX)
    mode_details = opt_map(body, "StreamModeDetails") or {}
    mode = opt_enum(mode_details, "StreamMode", ("PROVISIONED", "ON_DEMAND")) or "PROVISIONED"
    tags = str_map(body, "Tags")
    if shards is None:
        if mode == "PROVISIONED":
            raise invalid_argument("ShardCount is required for a PROVISIONED stream")
        shards = ON_DEMAND_SHARD_COUNT
    await ctx.engine.create_stream(
        name, shards, RETENTION_HOURS_DEFAULT, tags=tags, mode=_mode(mode)
    )
    return {}


def _mode(mode: str) -> StreamMode:
    return "ON_DEMAND" if mode == "ON_DEMAND" else "PROVISIONED"


async def delete_stream(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    enforce = opt_bool(body, "EnforceConsumerDeletion") or False
    if not enforce:
        meta = ctx.engine.stream_meta(name)
        consumers = await ConsumerStore(ctx.engine.catalog.store).list(name, meta.stream_id)
        if consumers:
            raise in_use(
                f"Stream {name} has {len(consumers)} registered consumer(s); deregister them "
                "or set EnforceConsumerDeletion"
            )
    await ctx.engine.delete_stream(name)
    return {}


async def describe_stream(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    limit = opt_int(body, "Limit", low=1, high=10_000) or 100
    start = opt_str(body, "ExclusiveStartShardId", max_len=128)
    meta = ctx.engine.stream_meta(name)
    shards = [s for s in _sorted_shards(meta) if start is None or s.shard_id > start]
    return {
        "StreamDescription": {
            **_summary(ctx, meta),
            "Shards": [shard_shape(s) for s in shards[:limit]],
            "HasMoreShards": len(shards) > limit,
            "RetentionPeriodHours": meta.retention_hours,
            "EnhancedMonitoring": [{"ShardLevelMetrics": list(meta.shard_level_metrics)}],
            **encryption_shape(meta),
        }
    }


async def describe_stream_summary(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    meta = ctx.engine.stream_meta(resolve_stream(ctx, body))
    consumers = await ConsumerStore(ctx.engine.catalog.store).list(meta.name, meta.stream_id)
    return {
        "StreamDescriptionSummary": {
            **_summary(ctx, meta),
            "RetentionPeriodHours": meta.retention_hours,
            "EnhancedMonitoring": [{"ShardLevelMetrics": list(meta.shard_level_metrics)}],
            **encryption_shape(meta),
            "OpenShardCount": len(meta.open_shards()),
            "ConsumerCount": len(consumers),
            "MaxRecordSizeInKiB": meta.max_record_bytes // 1024,
        }
    }


def _encode_token(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()


def _decode_token(token: str) -> dict[str, Any]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, RecursionError):  # a client's bytes: "[[[[..." too
        raise invalid_argument("NextToken is malformed") from None
    if not isinstance(doc, dict):
        raise invalid_argument("NextToken is malformed")
    return doc


async def list_streams(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    limit = opt_int(body, "Limit", low=1, high=LIST_LIMIT_MAX) or LIST_LIMIT_DEFAULT
    start = opt_str(body, "ExclusiveStartStreamName", max_len=128)
    token = opt_str(body, "NextToken", max_len=1048576)
    if token is not None:
        after = _decode_token(token).get("after")
        if not isinstance(after, str):
            raise invalid_argument("NextToken is malformed")
        start = after
    names = [n for n in ctx.engine.list_streams() if start is None or n > start]
    page = names[:limit]
    more = len(names) > limit
    summaries = [_summary(ctx, ctx.engine.stream_meta(n)) for n in page]
    return {
        "StreamNames": page,
        "HasMoreStreams": more,
        "NextToken": _encode_token({"after": page[-1]}) if more and page else None,
        "StreamSummaries": summaries,
    }


# -- ListShards ------------------------------------------------------------------------------------


def _filtered(
    meta: StreamMeta, kind: str | None, after: str | None, at_ms: int | None
) -> list[ShardMeta]:
    """Shards a ShardFilter selects, by id. AT_TIMESTAMP: the shards open at that time;
    FROM_TIMESTAMP: those and every shard opened later (shards keep their open and close times).
    """
    shards = _sorted_shards(meta)
    if kind == "AT_LATEST":
        shards = [s for s in shards if s.is_open]
    elif kind == "AT_TRIM_HORIZON":
        ids = {s.shard_id for s in shards}
        shards = [s for s in shards if not {s.parent_shard_id, s.adjacent_parent_shard_id} & ids]
    elif kind == "AT_TIMESTAMP" and at_ms is not None:
        shards = [s for s in shards if s.open_at(at_ms)]
    elif kind == "FROM_TIMESTAMP" and at_ms is not None:
        shards = [s for s in shards if s.open_at(at_ms) or s.created_ms > at_ms]
    if after is not None:
        shards = [s for s in shards if s.shard_id > after]
    return shards


def _shard_filter(body: dict[str, Any]) -> tuple[str | None, str | None, int | None]:
    """(filter type, AFTER_SHARD_ID's shard id, timestamp in ms) of a ShardFilter.

    Raises KinesisError."""
    shard_filter = opt_map(body, "ShardFilter")
    if shard_filter is None:
        return None, None, None
    kind = opt_enum(shard_filter, "Type", SHARD_FILTERS)
    if kind is None:
        raise validation("ShardFilter.Type must not be null")
    shard_id = opt_str(shard_filter, "ShardId", max_len=128)
    if kind == "AFTER_SHARD_ID" and shard_id is None:
        raise invalid_argument("ShardFilter AFTER_SHARD_ID needs a ShardId")
    at_ms = None
    if kind in ("AT_TIMESTAMP", "FROM_TIMESTAMP"):
        timestamp = shard_filter.get("Timestamp")
        if not isinstance(timestamp, datetime):
            raise invalid_argument(f"ShardFilter {kind} needs a Timestamp")
        at_ms = int(timestamp.timestamp() * 1000)
    return kind, shard_id if kind == "AFTER_SHARD_ID" else None, at_ms


async def list_shards(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    limit = opt_int(body, "MaxResults", low=1, high=LIST_LIMIT_MAX) or LIST_SHARDS_DEFAULT
    limit = min(limit, LIST_SHARDS_PAGE_MAX)
    token = opt_str(body, "NextToken", max_len=1048576)
    if token is not None:
        if body.get("StreamName") is not None or body.get("StreamARN") is not None:
            raise invalid_argument("NextToken and StreamName/StreamARN cannot both be given")
        if body.get("ExclusiveStartShardId") is not None:
            raise invalid_argument("NextToken and ExclusiveStartShardId cannot both be given")
        doc = _decode_token(token)
        name, kind, after, at_ms = doc.get("s"), doc.get("k"), doc.get("a"), doc.get("t")
        if not isinstance(name, str) or not isinstance(after, str):
            raise invalid_argument("NextToken is malformed")
        if at_ms is not None and (not isinstance(at_ms, int) or isinstance(at_ms, bool)):
            raise invalid_argument("NextToken is malformed")
        if kind is not None and kind not in SHARD_FILTERS:
            raise invalid_argument("NextToken is malformed")
    else:
        name = resolve_stream(ctx, body)
        kind, after, at_ms = _shard_filter(body)
        start = opt_str(body, "ExclusiveStartShardId", max_len=128)
        if start is not None:
            after = max(after or "", start)
    meta = ctx.engine.stream_meta(name)
    created = body.get("StreamCreationTimestamp")
    if isinstance(created, datetime) and abs(created.timestamp() * 1000 - meta.created_ms) > 1000:
        raise not_found(f"Stream {name} with the given creation timestamp not found")
    shards = _filtered(meta, kind, after, at_ms)
    page = shards[:limit]
    more = len(shards) > limit
    return {
        "Shards": [shard_shape(s) for s in page],
        "NextToken": _encode_token({"s": name, "k": kind, "a": page[-1].shard_id, "t": at_ms})
        if more
        else None,
    }


# -- retention, tags ------------------------------------------------------------------------------


async def _change_retention(ctx: GatewayContext, body: dict[str, Any], increase: bool) -> None:
    name = resolve_stream(ctx, body)
    hours = req_int(body, "RetentionPeriodHours", low=1, high=8760)
    current = ctx.engine.stream_meta(name).retention_hours
    if increase and hours < current:
        raise invalid_argument(
            f"Requested retention period ({hours} hours) for stream {name} can not be shorter "
            f"than existing retention period ({current} hours). Use "
            "DecreaseStreamRetentionPeriod API."
        )
    if not increase and hours > current:
        raise invalid_argument(
            f"Requested retention period ({hours} hours) for stream {name} can not be longer "
            f"than existing retention period ({current} hours). Use "
            "IncreaseStreamRetentionPeriod API."
        )
    if hours != current:
        await ctx.engine.update_retention(name, hours)


async def increase_retention(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    await _change_retention(ctx, body, increase=True)
    return {}


async def decrease_retention(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    await _change_retention(ctx, body, increase=False)
    return {}


# -- encryption at rest (the server's keyring stands in for KMS: docs/security.md) -------------


def encryption_type(meta: StreamMeta) -> str:
    """What new records of the stream are stored with: KMS (sealed at rest) or NONE."""
    return "NONE" if meta.encryption_key_id is None else "KMS"


def encryption_shape(meta: StreamMeta) -> dict[str, Any]:
    """EncryptionType, and KeyId when encrypted (DescribeStream and its summary)."""
    if meta.encryption_key_id is None:
        return {"EncryptionType": "NONE"}
    return {"EncryptionType": "KMS", "KeyId": meta.encryption_key_id}


async def start_encryption(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    if opt_enum(body, "EncryptionType", ("KMS", "NONE")) != "KMS":
        raise invalid_argument("EncryptionType must be KMS to start encryption")
    key_id = req_str(body, "KeyId", max_len=2048)
    await ctx.engine.set_encryption(name, key_id)
    return {}


async def stop_encryption(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    if opt_enum(body, "EncryptionType", ("KMS", "NONE")) != "KMS":
        raise invalid_argument("EncryptionType must be KMS to stop encryption")
    key_id = req_str(body, "KeyId", max_len=2048)
    current = ctx.engine.stream_meta(name).encryption_key_id
    if current is None:
        return {}  # already stored as plaintext: nothing to stop
    if key_id != current:
        raise invalid_argument(
            f"KeyId {summary(key_id, 300)} is not the key stream {name} is encrypted with"
        )
    await ctx.engine.set_encryption(name, None)
    return {}


def _tags_in(body: dict[str, Any]) -> dict[str, str]:
    tags = str_map(body, "Tags")
    if tags is None:
        raise validation(
            "1 validation error detected: Value null at 'tags' failed to satisfy "
            "constraint: Member must not be null"
        )
    if not 1 <= len(tags) <= TAGS_PER_CALL_MAX:
        raise validation(f"Tags must hold 1..{TAGS_PER_CALL_MAX} entries")
    return tags


def _keys_in(body: dict[str, Any]) -> list[str]:
    keys = str_list(body, "TagKeys", max_len=TAG_KEYS_PER_CALL_MAX)
    if not keys:
        raise validation(f"TagKeys must hold 1..{TAG_KEYS_PER_CALL_MAX} keys")
    return keys


async def add_tags(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    await ctx.engine.update_tags(resolve_stream(ctx, body), _tags_in(body), [])
    return {}


async def remove_tags(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    await ctx.engine.update_tags(resolve_stream(ctx, body), {}, _keys_in(body))
    return {}


async def list_tags_for_stream(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    meta = ctx.engine.stream_meta(resolve_stream(ctx, body))
    limit = opt_int(body, "Limit", low=1, high=50) or TAG_LIST_LIMIT_DEFAULT
    start = opt_str(body, "ExclusiveStartTagKey", max_len=128)
    keys = sorted(k for k in meta.tags if start is None or k > start)
    return {
        "Tags": [{"Key": k, "Value": meta.tags[k]} for k in keys[:limit]],
        "HasMoreTags": len(keys) > limit,
    }


async def tag_resource(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    await ctx.engine.update_tags(resource_stream(ctx, body), _tags_in(body), [])
    return {}


async def untag_resource(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    await ctx.engine.update_tags(resource_stream(ctx, body), {}, _keys_in(body))
    return {}


async def list_tags_for_resource(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    meta = ctx.engine.stream_meta(resource_stream(ctx, body))
    return {"Tags": [{"Key": k, "Value": meta.tags[k]} for k in sorted(meta.tags)]}


# -- resharding, limits ---------------------------------------------------------------------------


def _hash_key(body: dict[str, Any], member: str) -> int:
    value = req_str(body, member, max_len=39)
    try:
        return parse_explicit_hash_key(value)
    except Exception:
        raise invalid_argument(
            f"{member} {summary(value)} must be a decimal integer in 0..{HASH_KEY_MAX}"
        ) from None


async def split_shard(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    shard_id = req_str(body, "ShardToSplit", max_len=128)
    at = _hash_key(body, "NewStartingHashKey")
    await ctx.engine.split_shard(name, shard_id, at)
    return {}


async def merge_shards(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    shard_id = req_str(body, "ShardToMerge", max_len=128)
    adjacent = req_str(body, "AdjacentShardToMerge", max_len=128)
    await ctx.engine.merge_shards(name, shard_id, adjacent)
    return {}


async def update_shard_count(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    name = resolve_stream(ctx, body)
    target = req_int(body, "TargetShardCount", low=1, high=SHARD_COUNT_MAX)
    scaling = opt_enum(body, "ScalingType", ("UNIFORM_SCALING",))
    if scaling is None:
        raise validation("ScalingType must not be null")
    current = len(ctx.engine.stream_meta(name).open_shards())
    await ctx.engine.resize_stream(name, target)
    return {
        "StreamName": name,
        "StreamARN": ctx.stream_arn(name),
        "CurrentShardCount": current,
        "TargetShardCount": target,
    }


async def update_stream_mode(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    """PROVISIONED <-> ON_DEMAND; the shards stay as they are, and an ON_DEMAND stream's are
    split and merged by the scaler from then on (docs/kinesis.md, "On-demand streams")."""
    if opt_str(body, "StreamARN", max_len=2048) is None:
        raise validation("StreamARN must not be null")
    name = resolve_stream(ctx, body)
    details = opt_map(body, "StreamModeDetails")
    if details is None:
        raise validation("StreamModeDetails must not be null")
    mode = opt_enum(details, "StreamMode", ("PROVISIONED", "ON_DEMAND"))
    if mode is None:
        raise validation("StreamModeDetails.StreamMode must not be null")
    await ctx.engine.update_stream_mode(name, _mode(mode))
    return {}


async def describe_limits(ctx: GatewayContext, body: dict[str, Any]) -> dict[str, Any]:
    metas = [ctx.engine.stream_meta(n) for n in ctx.engine.list_streams()]
    return {
        "ShardLimit": SHARD_COUNT_MAX * max(1, len(metas)),
        "OpenShardCount": sum(len(m.open_shards()) for m in metas),
        "OnDemandStreamCount": sum(1 for m in metas if m.mode == "ON_DEMAND"),
        "OnDemandStreamCountLimit": 50,
    }


STREAM_OPERATIONS: Final[dict[str, Operation]] = {
    "CreateStream": create_stream,
    "DeleteStream": delete_stream,
    "DescribeStream": describe_stream,
    "DescribeStreamSummary": describe_stream_summary,
    "ListStreams": list_streams,
    "ListShards": list_shards,
    "IncreaseStreamRetentionPeriod": increase_retention,
    "DecreaseStreamRetentionPeriod": decrease_retention,
    "AddTagsToStream": add_tags,
    "RemoveTagsFromStream": remove_tags,
    "ListTagsForStream": list_tags_for_stream,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
    "SplitShard": split_shard,
    "MergeShards": merge_shards,
    "UpdateShardCount": update_shard_count,
    "UpdateStreamMode": update_stream_mode,
    "DescribeLimits": describe_limits,
    "StartStreamEncryption": start_encryption,
    "StopStreamEncryption": stop_encryption,
}
