"""``node_stats``: what one node holds and has done, for ``streamd top`` (read-only, no I/O).

For every shard pipeline this node runs (every shard in the embedded default; in cluster mode
the shards it leads), and every replicated shard (cluster/replicated.py) whose replica here
leads and serves, one row: whether it is open, its oldest stored offset and high watermark
(offsets count records), the segment bytes it keeps on disk, and the running totals of its
``ShardCounters`` (monitoring.py: records and bytes written and read since the pipeline opened,
records refused THROTTLED). Plus the node's own: its id and address in a cluster, shards held,
the data directory's free and total bytes. Totals, not rates: a reader takes two answers and
divides (streamd/cli/top/model.py), so nothing here keeps time or history.

Bounded: at most ``SHARD_ROWS_MAX`` rows (sorted by stream and shard id), then ``truncated``.
Rows are lists in ``COLUMNS`` order, not maps, so 10,000 shards stay well inside a frame
(about 120 bytes a row). Read by walking the engine's streams as monitoring.py's collector does
(Protocols below: no import of the engine).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from .catalog import ShardMeta, StreamMeta
from .monitoring import ShardCounters

SHARD_ROWS_MAX: Final = 20_000
COLUMNS: Final = (
    "stream",
    "shard_id",
    "open",
    "start_offset",
    "high_watermark",
    "stored_bytes",
    "incoming_records",
    "incoming_bytes",
    "outgoing_records",
    "outgoing_bytes",
    "write_throttled",
)


class _Log(Protocol):
    @property
    def start_offset(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...


class _Pipeline(Protocol):
    @property
    def counters(self) -> ShardCounters: ...
    @property
    def high_watermark(self) -> int: ...
    @property
    def log(self) -> _Log: ...
    @property
    def shard(self) -> ShardMeta: ...


class _Store(Protocol):
    @property
    def size_bytes(self) -> int: ...


class _Driver(Protocol):
    hw: int

    def serving(self) -> bool: ...


class _Replicated(Protocol):  # cluster/replicated.py: a shard of a replicated stream
    @property
    def counters(self) -> ShardCounters: ...
    @property
    def driver(self) -> _Driver: ...
    @property
    def store(self) -> _Store | None: ...
    @property
    def shard(self) -> ShardMeta: ...


class _Stream(Protocol):
    @property
    def meta(self) -> StreamMeta: ...
    @property
    def pipelines(self) -> Mapping[str, _Pipeline]: ...
    @property
    def replicated(self) -> Mapping[str, _Replicated]: ...


def shard_rows(
    streams: Mapping[str, _Stream], rows_max: int = SHARD_ROWS_MAX
) -> tuple[list[list[Any]], bool]:
    """(rows in ``COLUMNS`` order, truncated) for every pipeline of ``streams``."""
    rows: list[list[Any]] = []
    for name in sorted(streams):
        stream = streams[name]
        if stream.meta.status == "DELETING":
            continue
        for shard_id in sorted({*stream.pipelines, *stream.replicated}):
            if len(rows) >= rows_max:
                return rows, True
            row = _row(name, shard_id, stream)
            if row is not None:
                rows.append(row)
    return rows, False


def _row(name: str, shard_id: str, stream: _Stream) -> list[Any] | None:
    pipeline = stream.pipelines.get(shard_id)
    if pipeline is not None:
        log, c = pipeline.log, pipeline.counters
        start, end, stored = log.start_offset, pipeline.high_watermark, log.size_bytes
        is_open = pipeline.shard.is_open
    else:
        replica = stream.replicated[shard_id]
        store = replica.store
        if store is None or not replica.driver.serving():
            return None  # a follower (or stopped): its leader's node reports the shard
        # No retention on replicated shards yet: everything from offset 0 is kept.
        c, start, end, stored = replica.counters, 0, replica.driver.hw, store.size_bytes
        is_open = replica.shard.is_open
    return [
        name,
        shard_id,
        is_open,
        start,
        end,
        stored,
        c.incoming_records,
        c.incoming_bytes,
        c.outgoing_records,
        c.outgoing_bytes,
        c.write_throttled,
    ]


def disk_usage(data_dir: Path) -> tuple[int, int] | None:
    """(free to this process, total) bytes of the data directory's file system."""
    try:
        usage = shutil.disk_usage(data_dir)
    except OSError:
        return None
    return usage.free, usage.total
