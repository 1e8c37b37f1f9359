"""What a node holds and has done (the read-only ``node_stats`` op), and its live peers
(``cluster_nodes``), on a Client or a Connection: what ``streamd top`` samples.

    stats = await node_stats.node_stats(client)
    for shard in stats.shards: print(shard.stream, shard.shard_id, shard.high_watermark)

Counts are totals since each shard's pipeline opened on that node (a restart starts them
again); the caller takes two answers and divides by the time between them. The answer is
untrusted input: its parser checks the shape and raises ProtocolError only.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from .client_api import Caller
from .errors import ProtocolError
from .results import field

OP_NODE_STATS: Final = "node_stats"
OP_CLUSTER_NODES: Final = "cluster_nodes"
_INT_COLUMNS: Final = (
    "start_offset",
    "high_watermark",
    "stored_bytes",
    "incoming_records",
    "incoming_bytes",
    "outgoing_records",
    "outgoing_bytes",
    "write_throttled",
)


class ShardStats(NamedTuple):
    stream: str
    shard_id: str
    is_open: bool
    start_offset: int  # oldest stored offset (offsets count records)
    high_watermark: int  # committed end
    stored_bytes: int  # segment bytes on that node's disk
    incoming_records: int  # committed since the pipeline opened
    incoming_bytes: int  # record data and keys plus 24 a record (as Kinesis counts them)
    outgoing_records: int  # returned to readers
    outgoing_bytes: int  # stored batch bytes returned to readers
    write_throttled: int  # records refused THROTTLED


class NodeStats(NamedTuple):
    node_id: str | None  # None: an embedded server
    address: str | None
    shards_held: int
    data_dir_free_bytes: int | None
    data_dir_size_bytes: int | None
    shards: list[ShardStats]
    truncated: bool  # the node had more shards than one answer carries


class NodeAddress(NamedTuple):
    node_id: str
    native: str  # "host:port"


async def node_stats(caller: Caller, *, timeout_s: float | None = None) -> NodeStats:
    """Raises: ProtocolError (a malformed answer), UnknownOperationError (an older server),
    and the transport errors."""
    return node_stats_from_wire(await caller.call(OP_NODE_STATS, {}, timeout_s=timeout_s))


async def cluster_nodes(caller: Caller, *, timeout_s: float | None = None) -> list[NodeAddress]:
    """Every live node of the cluster with its native address; [] from an embedded server."""
    answer = await caller.call(OP_CLUSTER_NODES, {}, timeout_s=timeout_s)
    nodes = field(answer, "nodes", list)
    found: list[NodeAddress] = []
    for raw in nodes:
        if not isinstance(raw, dict):
            raise ProtocolError("cluster_nodes: a node is not a map")
        found.append(NodeAddress(field(raw, "node_id", str), field(raw, "native", str)))
    return found


def node_stats_from_wire(answer: dict[str, Any]) -> NodeStats:
    columns = field(answer, "columns", list)
    index = {name: i for i, name in enumerate(columns) if isinstance(name, str)}
    needed = ("stream", "shard_id", "open", *_INT_COLUMNS)
    missing = [name for name in needed if name not in index]
    if missing:
        raise ProtocolError(f"node_stats: columns {missing} missing")
    shards: list[ShardStats] = []
    for row in field(answer, "shards", list):
        if not isinstance(row, list) or len(row) < len(columns):
            raise ProtocolError("node_stats: a shard row is not a list of the columns")
        shards.append(_shard(row, index))
    return NodeStats(
        _optional(answer, "node_id", str),
        _optional(answer, "address", str),
        _count(answer.get("shards_held")),
        _optional_count(answer.get("data_dir_free_bytes")),
        _optional_count(answer.get("data_dir_size_bytes")),
        shards,
        field(answer, "truncated", bool),
    )


def _shard(row: list[Any], index: dict[str, int]) -> ShardStats:
    stream, shard_id, is_open = row[index["stream"]], row[index["shard_id"]], row[index["open"]]
    if not isinstance(stream, str) or not isinstance(shard_id, str):
        raise ProtocolError("node_stats: a shard row's names are not strings")
    if not isinstance(is_open, bool):
        raise ProtocolError("node_stats: a shard row's open flag is not a boolean")
    counts = [_count(row[index[name]]) for name in _INT_COLUMNS]
    return ShardStats(stream, shard_id, is_open, *counts)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"node_stats: expected a count, got {type(value).__name__}")
    return value


def _optional_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _optional(answer: dict[str, Any], name: str, kind: type) -> Any:
    value = answer.get(name)
    if value is not None and not isinstance(value, kind):
        raise ProtocolError(f"node_stats: {name} is not a {kind.__name__}")
    return value
