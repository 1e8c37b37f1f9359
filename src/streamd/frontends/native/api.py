"""Native-protocol operations: argument checks and result shapes around the engine.

One handler per operation in one table (``HANDLERS``; group operations in api_groups.py;
``bind_handlers`` gives the server both, bound to what they work on). Handlers check argument
types and request-level limits, call the engine, and return the result map that goes on the wire
(docs/protocol.md). They raise StreamdError subclasses only; the server turns anything else
into INTERNAL. A handler that waits long (a long-poll read) drops ``args`` once parsed, so a
request cannot pin whatever else its map held for the wait. Messages name values through
``summary`` (bounded), never a full ``repr``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from streamd_client.errors import (
    InvalidArgumentError,
    RequestTooLargeError,
)
from streamd_client.model import (
    PUT_RECORDS_COUNT_MAX,
    READ_BYTES_MAX,
    READ_WAIT_MS_MAX,
    RECORD_DATA_BYTES_CEILING,
    RETENTION_HOURS_DEFAULT,
    Position,
    check_partition_key,
    check_record_data,
    hash_bytes_of,
    parse_explicit_hash_key,
    put_records_bytes_max,
)
from streamd_client.summary import summary

from ... import node_stats
from ...engine import Engine
from ...groups.service import GroupService
from ...quotas import quota_tags
from ...routing import RecordIn
from .api_groups import GROUP_HANDLERS

Handler = Callable[[Engine, dict[str, Any]], Awaitable[dict[str, Any]]]
BoundHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# Integer arguments are 64-bit; a bignum (the decoder takes up to strict_cbor.BIGNUM_BYTES_MAX
# for explicit hash keys) is refused here, before any arithmetic or formatting sees it.
INT_ARG_MIN = -(2**63)
INT_ARG_MAX = 2**64 - 1


def _arg(args: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = args.get(name, default)
    if value is ...:
        raise InvalidArgumentError(f"missing argument {name!r}")  # our own names: short
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgumentError(f"argument {name!r} must be {kind.__name__}")
    if isinstance(value, int) and not INT_ARG_MIN <= value <= INT_ARG_MAX:  # a bignum
        raise InvalidArgumentError(f"argument {name!r} is out of range: {summary(value)}")
    return value


async def _create_stream(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    mode = _arg(args, "mode", str, "PROVISIONED")
    if mode not in ("PROVISIONED", "ON_DEMAND"):
        raise InvalidArgumentError(f"mode must be PROVISIONED or ON_DEMAND: {summary(mode)}")
    # Per-stream quota figures, kept as the stream's streamd:quota:* tags (quotas.py).
    tags = quota_tags(_arg(args, "quotas", dict, {}))
    await engine.create_stream(
        _arg(args, "stream", str),
        _arg(args, "shard_count", int),
        _arg(args, "retention_hours", int, RETENTION_HOURS_DEFAULT),
        replication_factor=(
            _arg(args, "replication_factor", int) if "replication_factor" in args else None
        ),
        tags=tags,
        mode="ON_DEMAND" if mode == "ON_DEMAND" else "PROVISIONED",
    )
    return {}


async def _delete_stream(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    await engine.delete_stream(_arg(args, "stream", str))
    return {}


async def _list_streams(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    return {"streams": engine.list_streams()}


async def _describe_stream(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    return {"stream": engine.describe_stream(_arg(args, "stream", str))}


async def _set_encryption(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    key_id = args.get("key_id")
    if key_id is not None:
        key_id = _arg(args, "key_id", str)
    await engine.set_encryption(_arg(args, "stream", str), key_id)
    return {}


async def _update_retention(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    await engine.update_retention(_arg(args, "stream", str), _arg(args, "retention_hours", int))
    return {}


def _record_in(raw: Any) -> RecordIn:
    if not isinstance(raw, dict):
        raise InvalidArgumentError("each record must be a map {k, d, h?}")
    key = check_partition_key(raw.get("k"))
    data = check_record_data(raw.get("d"), RECORD_DATA_BYTES_CEILING)  # the stream's: below
    explicit = raw.get("h")
    if explicit is None:
        hash_bytes = hash_bytes_of(key)
    else:
        hash_bytes = parse_explicit_hash_key(explicit).to_bytes(16, "big")
    return RecordIn(key, hash_bytes, data)


async def _put_records(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    stream = _arg(args, "stream", str)
    raw_records = _arg(args, "records", list)
    if not 1 <= len(raw_records) <= PUT_RECORDS_COUNT_MAX:
        raise RequestTooLargeError(
            f"put_records takes 1..{PUT_RECORDS_COUNT_MAX} records, got {len(raw_records)}"
        )
    records = [_record_in(r) for r in raw_records]
    record_bytes_max = engine.stream_meta(stream).max_record_bytes  # UpdateMaxRecordSize's
    for record in records:
        check_record_data(record.data, record_bytes_max)
    total = sum(len(r.data) + len(r.partition_key.encode()) for r in records)
    request_bytes_max = put_records_bytes_max(record_bytes_max)
    if total > request_bytes_max:
        raise RequestTooLargeError(
            f"put_records carries {total} bytes; the limit is {request_bytes_max}"
        )
    # A node forwarding server-routed puts marks them (cluster/peers.py): never forward again.
    forwarded = _arg(args, "forwarded", bool, False)
    outcomes = await engine.put_records(stream, records, forward=not forwarded)
    results: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.error is not None:
            failure: dict[str, Any] = {"code": outcome.error.code, "message": outcome.error.message}
            if outcome.error.details:  # THROTTLED's retry_after_ms among them
                failure["details"] = outcome.error.details
            results.append(failure)
        else:
            results.append({"shard_id": outcome.shard_id, "sequence": outcome.sequence})
    failed = sum(1 for o in outcomes if o.error is not None)
    return {"failed": failed, "results": results}


async def _append_batch(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    outcome = await engine.append_batch(
        _arg(args, "stream", str), _arg(args, "shard_id", str), _arg(args, "batch", bytes)
    )
    return {
        "shard_id": outcome.shard_id,
        "base_offset": outcome.base_offset,
        "base_sequence": outcome.base_sequence,
        "record_count": outcome.record_count,
        "duplicate": outcome.duplicate,
    }


async def _read(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    max_bytes = _arg(args, "max_bytes", int, 1024 * 1024)
    wait_ms = _arg(args, "wait_ms", int, 0)
    if not 1 <= max_bytes <= READ_BYTES_MAX:
        raise InvalidArgumentError(f"max_bytes must be 1..{READ_BYTES_MAX}")
    if not 0 <= wait_ms <= READ_WAIT_MS_MAX:
        raise InvalidArgumentError(f"wait_ms must be 0..{READ_WAIT_MS_MAX}")
    stream = _arg(args, "stream", str)
    shard_id = _arg(args, "shard_id", str)
    position = Position.from_wire(args.get("from"))
    counted = not _arg(args, "probe", bool, False)  # a peer's lag probe (cluster/peers.py)
    # A polling read, counted against the shard's read quota, unless another node forwards a
    # lookup of its own (cluster/peers.py says so).
    metered = _arg(args, "metered", bool, True)
    del args  # a long-poll holds what it parsed, not the request's map (whatever else it held)
    # Not forwarded: a native client goes to the leader itself (NOT_LEADER names it).
    result = await engine.read(
        stream,
        shard_id,
        position,
        max_bytes,
        wait_ms,
        forward=False,
        counted=counted,
        metered=metered,
    )
    answer: dict[str, Any] = {
        "batches": result.batches,
        "start_offset": result.start_offset,
        "next_offset": result.next_offset,
        "high_watermark": result.high_watermark,
        "millis_behind": result.millis_behind,
        "tip_arrival_ms": result.tip_arrival_ms,
        "shard_end": result.shard_end,
        "child_shards": [
            {
                "shard_id": c.shard_id,
                "parent_shard_ids": list(c.parent_shard_ids),
                "hash_key_start": c.hash_key_start,
                "hash_key_end": c.hash_key_end,
            }
            for c in result.child_shards
        ],
    }
    if result.skipped is not None:  # began in a quarantined range: the gap it jumped, named
        answer["skipped"] = {"base_offset": result.skipped[0], "next_offset": result.skipped[1]}
    return answer


async def _quarantine_range(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    return await engine.quarantine_range(
        _arg(args, "stream", str),
        _arg(args, "shard_id", str),
        _arg(args, "from_sequence", str),
        _arg(args, "to_sequence", str),
    )


async def _split_shard(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    raw_key = args.get("hash_key")
    at = None if raw_key is None else parse_explicit_hash_key(raw_key)
    children = await engine.split_shard(_arg(args, "stream", str), _arg(args, "shard_id", str), at)
    return {"shard_ids": children}


async def _merge_shards(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    child = await engine.merge_shards(
        _arg(args, "stream", str),
        _arg(args, "shard_id", str),
        _arg(args, "adjacent_shard_id", str),
    )
    return {"shard_id": child}


async def _resize_stream(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    steps = await engine.resize_stream(_arg(args, "stream", str), _arg(args, "shard_count", int))
    return {"operations": steps}


async def _seal_shard(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    """Internal (cluster nodes only): seal a parent for the node running a reshard step."""
    ending = await engine.seal_shard(
        _arg(args, "stream", str),
        _arg(args, "shard_id", str),
        hold_ms=_arg(args, "hold_ms", int),
        token=_arg(args, "token", str),
    )
    return {"ending_offset": ending}


async def _unseal_shard(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    """Internal (cluster nodes only): undo ``seal_shard`` of that token."""
    unsealed = engine.unseal_shard(
        _arg(args, "stream", str), _arg(args, "shard_id", str), token=_arg(args, "token", str)
    )
    return {"unsealed": unsealed}


async def _cluster_nodes(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    """Every live node with its addresses (cluster mode); the embedded default names none."""
    return {
        "nodes": [
            {"node_id": node_id, "native": native, "kinesis": kinesis, "live": True}
            for node_id, (native, kinesis) in sorted(engine.locator.node_addresses().items())
        ]
    }


async def _node_stats(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    """Read-only totals of this node and of every shard it runs (streamd/node_stats.py)."""
    rows, truncated = node_stats.shard_rows(engine.streams)
    node_id, address = engine.locator.self_node() if engine.clustered else (None, None)
    usage = node_stats.disk_usage(engine.config.data_dir)
    return {
        "node_id": node_id,
        "address": address,
        "shards_held": engine.shards_held(),
        "data_dir_free_bytes": None if usage is None else usage[0],
        "data_dir_size_bytes": None if usage is None else usage[1],
        "columns": list(node_stats.COLUMNS),
        "shards": rows,
        "truncated": truncated,
    }


HANDLERS: dict[str, Handler] = {
    "create_stream": _create_stream,
    "delete_stream": _delete_stream,
    "list_streams": _list_streams,
    "describe_stream": _describe_stream,
    "update_retention": _update_retention,
    "set_encryption": _set_encryption,
    "put_records": _put_records,
    "append_batch": _append_batch,
    "read": _read,
    "split_shard": _split_shard,
    "merge_shards": _merge_shards,
    "resize_stream": _resize_stream,
    "quarantine_range": _quarantine_range,
    "cluster_nodes": _cluster_nodes,
    "node_stats": _node_stats,
    "seal_shard": _seal_shard,
    "unseal_shard": _unseal_shard,
}


def bind_handlers(engine: Engine, groups: GroupService) -> dict[str, BoundHandler]:
    """Every operation's handler with what it works on bound: the engine for stream and record
    operations, the group service for group operations (both from streamd/node.py)."""
    bound: dict[str, BoundHandler] = {op: partial(h, engine) for op, h in HANDLERS.items()}
    bound.update({op: partial(h, groups) for op, h in GROUP_HANDLERS.items()})
    return bound
