"""The engine: streams, their shards' pipelines, routing, and the operations every front end uses.

The native protocol server (``server.py``) and, later, the Kinesis gateway are thin translations
onto these methods; no semantics live anywhere else. The engine owns a nursery in which every
shard's appender runs, and a retention task. Metadata changes go through the catalog (the
metadata store) first and are applied to the running pipelines after.

Data directory layout: ``<data>/meta.sqlite3`` and ``<data>/streams/<stream>/<shard_id>/``
holding the shard's segment files. A deleted stream's directory is first renamed into
``<data>/trash/`` (atomic), then removed.
"""

from __future__ import annotations

import bisect
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from streamd_client import batch as batchfmt
from streamd_client.errors import (
    CorruptDataError,
    InvalidBatchError,
    ShardNotFoundError,
    StreamdError,
    StreamNotFoundError,
)
from streamd_client.model import (
    HASH_KEY_MAX,
    Position,
    check_retention_hours,
    check_shard_count,
    check_stream_name,
)

from . import metrics
from .catalog import Catalog, ShardMeta, StreamMeta
from .config import ServerConfig
from .meta import MetaStore
from .replication import Committer, LocalCommitter
from .shard import PendingWrite, PipelineConfig, ReadResult, ShardPipeline, now_ms
from .storage import LogConfig, ShardLog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RecordIn:
    """A validated record for put_records: key, its 16-byte hash, and data."""

    partition_key: str
    hash_bytes: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PutOutcome:
    shard_id: str | None = None
    sequence: str | None = None
    error: StreamdError | None = None


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    shard_id: str
    base_offset: int
    base_sequence: str
    record_count: int
    duplicate: bool


class _Stream:
    """A running stream: its metadata and one pipeline per open or readable shard."""

    def __init__(self, meta: StreamMeta, directory: Path) -> None:
        self.meta = meta
        self.directory = directory
        self.pipelines: dict[str, ShardPipeline] = {}
        self.route_starts: list[int] = []
        self.route_shards: list[ShardMeta] = []
        self.reroute()

    def reroute(self) -> None:
        open_shards = sorted(
            (s for s in self.meta.shards if s.is_open), key=lambda s: s.hash_key_start
        )
        self.route_starts = [s.hash_key_start for s in open_shards]
        self.route_shards = open_shards

    def shard_for(self, hash_bytes: bytes) -> ShardMeta:
        key = int.from_bytes(hash_bytes, "big")
        shard = self.route_shards[bisect.bisect_right(self.route_starts, key) - 1]
        assert shard.hash_key_start <= key <= shard.hash_key_end
        return shard

    def pipeline(self, shard_id: str) -> ShardPipeline:
        pipeline = self.pipelines.get(shard_id)
        if pipeline is None:
            raise ShardNotFoundError(
                f"stream {self.meta.name!r} has no shard {shard_id!r}", shard_id=shard_id
            )
        return pipeline


class Engine:
    def __init__(
        self, config: ServerConfig, store: MetaStore, committer: Committer | None = None
    ) -> None:
        self.config = config
        self.catalog = Catalog(store)
        self.committer = committer or LocalCommitter()
        self.streams: dict[str, _Stream] = {}
        self._nursery: trio.Nursery | None = None
        self._admin_lock = trio.Lock()
        self._log_config = LogConfig(
            segment_bytes_max=config.segment_bytes_max,
            segment_age_ms_max=config.segment_age_ms_max,
            fsync=config.fsync != "never",
        )
        self._pipeline_config = PipelineConfig(
            fsync=config.fsync,
            fsync_interval_ms=config.fsync_interval_ms,
            queue_bytes_max=config.shard_queue_bytes_max,
            queue_requests_max=config.shard_queue_requests_max,
            commit_batch_bytes_max=config.commit_batch_bytes_max,
            tail_cache_bytes_max=config.tail_cache_bytes_max,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open every stream, run the shard appenders and retention until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for meta in await self.catalog.load_all():
                if meta.status == "DELETING":
                    await self._finish_delete(meta)
                else:
                    await self._open_stream(meta)
            nursery.start_soon(self._retention_loop)
            log.info("engine.started", streams=len(self.streams))
            task_status.started()
            await trio.sleep_forever()

    async def close(self) -> None:
        """Drain every shard's queue and close its log cleanly. Call before cancelling ``run``."""
        for stream in list(self.streams.values()):
            await self._close_stream(stream)
        self.streams.clear()
        log.info("engine.stopped")

    def _stream_dir(self, meta: StreamMeta) -> Path:
        return self.config.data_dir / "streams" / meta.name

    async def _open_stream(self, meta: StreamMeta) -> _Stream:
        assert self._nursery is not None
        stream = _Stream(meta, self._stream_dir(meta))
        await trio.to_thread.run_sync(
            _prepare_stream_dir, stream.directory, meta.stream_id, self.config.data_dir / "trash"
        )
        for shard in meta.shards:
            shard_log = await trio.to_thread.run_sync(
                self._open_log, stream.directory / shard.shard_id
            )
            pipeline = ShardPipeline(
                meta.name, shard, shard_log, self._pipeline_config, self.committer
            )
            stream.pipelines[shard.shard_id] = pipeline
            self._nursery.start_soon(pipeline.run)
        self.streams[meta.name] = stream
        return stream

    def _open_log(self, directory: Path) -> ShardLog:
        shard_log = ShardLog.open(directory, self._log_config, verify_all=False)
        report = shard_log.recovery
        metrics.RECOVERY_TRUNCATED_BYTES.inc(report.truncated_bytes)
        metrics.CORRUPT_RANGES.inc(len(report.corrupt_ranges))
        log.info(
            "shard.opened",
            directory=str(directory),
            start_offset=shard_log.start_offset,
            next_offset=shard_log.next_offset,
            segments=report.segments,
            batches=report.batches,
            truncated_bytes=report.truncated_bytes,
            corrupt_ranges=report.corrupt_ranges,
            clean=report.clean,
        )
        return shard_log

    async def _close_stream(self, stream: _Stream) -> None:
        for pipeline in stream.pipelines.values():
            await pipeline.close()
            await trio.to_thread.run_sync(partial(pipeline.log.close, clean=True))

    async def _move_to_trash(self, directory: Path) -> None:
        await trio.to_thread.run_sync(_remove_dir, directory, self.config.data_dir / "trash")

    async def _finish_delete(self, meta: StreamMeta) -> None:
        await self._move_to_trash(self._stream_dir(meta))
        await self.catalog.remove(meta.name)
        log.info("stream.deleted", stream=meta.name)

    async def _retention_loop(self) -> None:
        while True:
            await trio.sleep(self.config.retention_check_interval_ms / 1000)
            self.apply_retention(now_ms())

    def apply_retention(self, at_ms: int) -> None:
        for stream in self.streams.values():
            cutoff = at_ms - stream.meta.retention_hours * 3_600_000
            for pipeline in stream.pipelines.values():
                pipeline.request_retention(cutoff)

    # -- admin ----------------------------------------------------------------------------------

    def _stream(self, name: str) -> _Stream:
        check_stream_name(name)
        stream = self.streams.get(name)
        if stream is None or stream.meta.status == "DELETING":
            raise StreamNotFoundError(f"stream {name!r} not found", stream=name)
        return stream

    async def create_stream(self, name: str, shard_count: int, retention_hours: int) -> None:
        """Raises InvalidArgumentError (and subclasses), StreamExistsError."""
        check_stream_name(name)
        check_shard_count(shard_count)
        check_retention_hours(retention_hours)
        async with self._admin_lock:
            meta = StreamMeta.new(name, shard_count, retention_hours, now_ms())
            await self.catalog.create(meta)
            await self._open_stream(meta)
        log.info("stream.created", stream=name, shards=shard_count, retention_hours=retention_hours)

    async def delete_stream(self, name: str) -> None:
        """Raises StreamNotFoundError, InvalidStreamNameError."""
        async with self._admin_lock:
            stream = self._stream(name)
            stream.meta = await self.catalog.update(name, lambda m: replace(m, status="DELETING"))
            await self._close_stream(stream)
            del self.streams[name]
            await self._finish_delete(stream.meta)

    def list_streams(self) -> list[str]:
        return sorted(n for n, s in self.streams.items() if s.meta.status != "DELETING")

    def describe_stream(self, name: str) -> dict[str, Any]:
        """Raises StreamNotFoundError, InvalidStreamNameError."""
        return self._stream(name).meta.describe()

    async def update_retention(self, name: str, retention_hours: int) -> None:
        """Raises StreamNotFoundError, InvalidArgumentError."""
        check_stream_name(name)
        check_retention_hours(retention_hours)
        async with self._admin_lock:
            stream = self._stream(name)
            stream.meta = await self.catalog.update(
                name, lambda m: replace(m, retention_hours=retention_hours)
            )
        log.info("stream.retention_updated", stream=name, retention_hours=retention_hours)

    # -- data -----------------------------------------------------------------------------------

    async def put_records(self, name: str, records: Sequence[RecordIn]) -> list[PutOutcome]:
        """Route validated records to shards and wait for each shard's commit.

        Records are enqueued on every shard before any wait, so shards commit in parallel.
        Per-record failures (throttling, full disk) come back in the outcomes.
        Raises StreamNotFoundError.
        """
        stream = self._stream(name)
        by_shard: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            shard = stream.shard_for(record.hash_bytes)
            by_shard.setdefault(shard.shard_id, []).append(i)
        outcomes: list[PutOutcome] = [PutOutcome()] * len(records)
        waits: list[tuple[ShardPipeline, list[int], PendingWrite]] = []
        for shard_id, indexes in by_shard.items():
            pipeline = stream.pipeline(shard_id)
            try:
                write = pipeline.enqueue_records(
                    [records[i].partition_key for i in indexes],
                    [records[i].hash_bytes for i in indexes],
                    [records[i].data for i in indexes],
                )
            except StreamdError as exc:
                for i in indexes:
                    outcomes[i] = PutOutcome(error=exc)
                continue
            waits.append((pipeline, indexes, write))
        for pipeline, indexes, write in waits:
            try:
                base, _, _ = await write.wait()
            except StreamdError as exc:
                for i in indexes:
                    outcomes[i] = PutOutcome(error=exc)
                continue
            for n, i in enumerate(indexes):
                outcomes[i] = PutOutcome(pipeline.shard.shard_id, pipeline.sequence_of(base + n))
        return outcomes

    async def append_batch(self, name: str, shard_id: str, data: bytes) -> AppendOutcome:
        """Validate a client-built batch and commit it (idempotently for producer batches).

        Raises StreamNotFoundError, ShardNotFoundError, InvalidBatchError, WrongShardError,
        ShardClosedError, ThrottledError, OutOfOrderSequenceError, StorageFullError.
        """
        pipeline = self._stream(name).pipeline(shard_id)
        header = _validate_batch(data, pipeline.shard)
        write = pipeline.enqueue_batch(data, header)
        base, count, duplicate = await write.wait()
        return AppendOutcome(shard_id, base, pipeline.sequence_of(base), count, duplicate)

    async def read(
        self, name: str, shard_id: str, position: Position, max_bytes: int, wait_ms: int
    ) -> ReadResult:
        """Raises StreamNotFoundError, ShardNotFoundError, InvalidSequenceNumberError,
        CorruptDataError (for a stored batch that fails its CRC; details name its offsets)."""
        pipeline = self._stream(name).pipeline(shard_id)
        # A whole answer must fit in one frame (frame header and CBOR framing included).
        max_bytes = min(max_bytes, self.config.frame_bytes_max - 64 * 1024)
        return await pipeline.read(position, max_bytes, wait_ms)


def _validate_batch(data: bytes, shard: ShardMeta) -> batchfmt.BatchHeader:
    """Check a client batch whole: header, payload CRC, records, limits, and routing."""
    try:
        header = batchfmt.parse_header(data)
        if header.length != len(data):
            raise InvalidBatchError(
                f"batch header says {header.length} bytes but {len(data)} arrived"
            )
        batchfmt.verify_payload(data, header)
        records = batchfmt.decode_records(data, header)
    except CorruptDataError as exc:
        raise InvalidBatchError(f"batch rejected: {exc.message}") from None
    low = shard.hash_key_start.to_bytes(16, "big")
    high = min(shard.hash_key_end, HASH_KEY_MAX).to_bytes(16, "big")
    batchfmt.check_records(records, low, high)
    return header


def _remove_dir(directory: Path, trash: Path) -> None:
    """Rename into the trash (atomic, so a crash never leaves half a stream), then delete."""
    if not directory.exists():
        return
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{directory.name}-{now_ms()}-{os.getpid()}"
    directory.rename(target)
    shutil.rmtree(target, ignore_errors=True)


def _prepare_stream_dir(directory: Path, stream_id: str, trash: Path) -> None:
    """Create the stream's directory; files of an older incarnation of the name go to trash."""
    marker = directory / "STREAM_ID"
    if marker.exists() and marker.read_text() != stream_id:
        _remove_dir(directory, trash)
    directory.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text(stream_id)
