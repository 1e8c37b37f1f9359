"""The engine: streams, their shards' pipelines, routing, and the operations every front end uses.

The front ends (``frontends/native/`` and the Kinesis gateway, ``frontends/kinesis/``) are thin
translations onto these methods; no semantics live anywhere else. The composition root
(``node.py``) builds the engine and hands it to them. The engine owns a nursery in which every
shard's appender runs, plus the retention task (which also forgets expired closed shards) and
running resizes. Metadata changes go through the
catalog (the metadata store) first and are applied to the running pipelines after; resharding
is described in docs/design.md.

Data directory layout (``layout.py``): ``<data>/meta.sqlite3`` and
``<data>/streams-by-id/<stream_id>/<shard_id>/`` holding the shard's segment files: by the
stream's immutable id, never its name, so no name can be a path. A deleted stream's directory is
first renamed into ``<data>/trash/`` (atomic), then removed.
"""

from __future__ import annotations

import bisect
import itertools
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from streamd_client import batch as batchfmt
from streamd_client.errors import (
    CorruptDataError,
    InternalError,
    InvalidArgumentError,
    InvalidBatchError,
    InvalidSequenceNumberError,
    LimitExceededError,
    NotLeaderError,
    ResourceInUseError,
    ShardClosedError,
    ShardNotFoundError,
    ShardUnavailableError,
    ShuttingDownError,
    StorageFullError,
    StreamdError,
    StreamNotFoundError,
)
from streamd_client.model import (
    HASH_KEY_MAX,
    Position,
    check_retention_hours,
    check_shard_count,
    check_stream_name,
    parse_sequence,
)
from streamd_client.results import ChildShard
from streamd_client.summary import summary

from . import layout, metrics, node_limits, reshard
from .catalog import Catalog, ShardMeta, StreamMeta, StreamMode
from .clock import Clock, WallClock
from .cluster import reshard_fence
from .cluster.replicated import ReplicatedShard, ReplicatedWrite, ReplicationWiring
from .cluster.seals import SealHolds
from .config import ServerConfig
from .iothread import IoPool
from .meta import MetaStore
from .quotas import check_quota_tags
from .replication import Committer, LocalCommitter
from .routing import (
    LOCAL,
    EverythingLocal,
    Local,
    Location,
    PeerCalls,
    PutOutcome,
    RecordIn,
    Remote,
    ShardLocator,
    Unavailable,
    located_error,
)
from .security.keyring import Keyring, KeyringError
from .shard import PendingWrite, PipelineConfig, ReadResult, ShardPipeline, now_ms
from .startup import StartupError
from .storage import FdCache, LogConfig, ShardLog
from .throttle import Quotas

log = structlog.get_logger(__name__)

_SEAL_TIMEOUT_S = 20.0  # a parent's queue must drain within this when it is closed
_REROUTE_ROUNDS_MAX = 8  # put_records routes again at most this often across reshards
# How long, in all, a write waits for reshard steps to finish: under the clients' 30 s request
# timeout, over one step's worst case (the seal timeout).
_RESHAPE_WAIT_S = 25.0
_RESIZE_STEP_ATTEMPTS = 3
# Cluster mode (docs/cluster.md, "Resharding from any node"). A seal made for a step lasts this
# long unless the switch or an unseal ends it first; then its node decides on the catalog.
SEAL_HOLD_MS = 10_000
SEAL_HOLD_MS_MAX = 60_000  # what the native op seal_shard accepts
_TOKEN_CHARS_MAX = 64
_UNSEAL_TIMEOUT_S = 5.0
# A resize step failing for a transient reason (a parent's node down, a child not placed yet,
# etcd away) is retried for this long, with pauses growing to _RESIZE_PAUSE_S_MAX.
_RESIZE_STEP_WAIT_S = 60.0
_RESIZE_PAUSE_S_MAX = 2.0
# Server-routed puts in cluster mode: a record whose shard was closed, moved or not placed yet
# is routed again after a pause that doubles from _REROUTE_PAUSE_S (to 1 s), within the wait.
_CLUSTER_REROUTE_ROUNDS_MAX = 16
_REROUTE_PAUSE_S = 0.05
TAGS_PER_STREAM_MAX = 50
RF_MAX = 5  # replicas per shard: a majority of 5 rides out two lost nodes
RF_TAG = "streamd:replication-factor"  # on create (Kinesis CreateStream has no such field)
TAG_KEY_CHARS_MAX = 128
TAG_VALUE_CHARS_MAX = 256


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    shard_id: str
    base_offset: int
    base_sequence: str
    record_count: int
    duplicate: bool


class _Stream:
    """A running stream: its metadata and one pipeline per open or readable shard this node
    leads (all of them in the embedded default)."""

    def __init__(self, meta: StreamMeta, directory: Path, locator: ShardLocator) -> None:
        self.meta = meta
        self.directory = directory
        self.locator = locator
        self.pipelines: dict[str, ShardPipeline] = {}
        # Replication factor > 1 (cluster mode): this node's replica of each shard it holds
        # one of, leader or follower; the engine serves through the one it leads.
        self.replicated: dict[str, ReplicatedShard] = {}
        self.route_starts: list[int] = []
        self.route_shards: list[ShardMeta] = []
        self.lock = trio.Lock()  # one metadata change at a time: a reshard step, a delete
        self.reshaped = trio.Event()  # set (then replaced) whenever a reshard step ends
        self.reroute()

    def reroute(self) -> None:
        reshard.check_shard_map(self.meta)  # routing relies on it: no per-record range check
        open_shards = self.meta.open_shards()
        self.route_starts = [s.hash_key_start for s in open_shards]
        self.route_shards = open_shards

    def signal_reshaped(self) -> None:
        self.reshaped.set()
        self.reshaped = trio.Event()

    def pipeline(self, shard_id: str) -> ShardPipeline:
        pipeline = self.pipelines.get(shard_id)
        if pipeline is None:
            if self.meta.shard(shard_id) is not None:
                name = self.meta.name
                raise located_error(name, shard_id, self.locator.locate(name, shard_id))
            raise ShardNotFoundError(
                f"stream {self.meta.name!r} has no shard {summary(shard_id)}", shard_id=shard_id
            )
        return pipeline


class Engine:
    def __init__(
        self,
        config: ServerConfig,
        store: MetaStore,
        committer: Committer | None = None,
        *,
        budget: node_limits.ShardBudget | None = None,
        locator: ShardLocator | None = None,
        peers: PeerCalls | None = None,
        replication: ReplicationWiring | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``budget``: how many shards this node may hold (default: from ``config`` and this
        process's open-files limit, counting ``connections_max`` per listener). ``clock``: the
        shard pipelines' time (default the wall clock).

        Cluster mode (node.py): ``locator`` says which shards this node leads (it runs
        pipelines for those only), ``peers`` forwards server-routed puts and reads to the
        others; the controller gives each shard its ``shards/`` document; ``replication``
        runs a replica (cluster/replicated.py) of every shard of a stream with replication
        factor > 1 that the document places here. Without them: the embedded default.
        """
        self.config = config
        # Encryption at rest: the keyring (--keyring), or None (StartStreamEncryption refused).
        self.keyring: Keyring | None = None
        if config.keyring_file is not None:
            try:
                self.keyring = Keyring.load(config.keyring_file)
            except KeyringError as exc:
                raise StartupError(f"--keyring: {exc}") from None
        self.clustered = locator is not None
        self.locator: ShardLocator = locator or EverythingLocal()
        self._peers = peers
        self._replication = replication
        self.catalog = Catalog(store, clustered=self.clustered)
        self.committer = committer or LocalCommitter()
        self.clock: Clock = clock or WallClock()
        self.quotas = Quotas(config.quotas, self.clock)  # throughput quotas (throttle.py)
        self.streams: dict[str, _Stream] = {}
        self._node_id: str | None = self.locator.self_node()[0] if self.clustered else None
        # Cluster mode: seals this node holds for reshards (any node's), and the streams whose
        # reshard this node runs now (so the follower never starts a takeover of one here).
        self._seal_holds = SealHolds(self._release_seal)
        self._runs: set[str] = set()
        listeners = 2 if config.kinesis_listen else 1
        self.budget = budget or node_limits.ShardBudget(
            config.shards_max,
            node_limits.nofile_limit(),
            config.connections_max * listeners,
            config.segment_fds_max,
            config.io_threads_max,
        )
        # Per node, not per shard: open segment files and I/O threads (docs/operations.md).
        self._fds = FdCache(self.budget.segment_fds)
        self._io_pool = IoPool(config.io_threads_max, name="streamd-io")
        metrics.SEGMENT_FDS.set_function(lambda: len(self._fds))
        metrics.IO_THREADS.set_function(lambda: self._io_pool.threads)
        metrics.SHARDS.set_function(self.shards_held)
        self._shards_reserved = 0  # shards of creates and reshards under way, not yet opened
        self._nursery: trio.Nursery | None = None
        self._admin_lock = trio.Lock()
        self._closing = False  # close() began: requests get SHUTTING_DOWN (retryable)
        self._resize_scopes: set[trio.CancelScope] = set()
        # Streams whose files a full-disk delete removed but whose metadata it could not: a
        # retried delete finishes them (``_delete_on_full_disk``).
        self._half_deleted: dict[str, StreamMeta] = {}
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
            metas = await self.catalog.load_all()
            await trio.to_thread.run_sync(self._migrate_layout, metas)
            for meta in metas:
                if meta.status == "DELETING":
                    await self._finish_delete(meta)
                else:
                    await self._resume(await self._open_stream(meta))
            nursery.start_soon(self._retention_loop)
            self._report_limits()
            log.info("engine.started", streams=len(self.streams))
            task_status.started()
            await trio.sleep_forever()

    async def close(self) -> None:
        """Drain every shard's queue and close its log cleanly. Call before cancelling ``run``.

        A running resize stops between steps (or its current step is undone before its switch);
        it resumes at the next start.
        """
        self._closing = True
        for scope in self._resize_scopes:
            scope.cancel()
        for stream in list(self.streams.values()):
            async with stream.lock:
                await self._close_stream(stream)
        self.streams.clear()
        await trio.to_thread.run_sync(self._io_pool.close)
        log.info("engine.stopped")

    # -- cluster mode: following the shared catalog and the shard map ---------------------------

    async def apply_catalog(self, name: str, meta: StreamMeta | None, *, as_of: int) -> None:
        """Make this node's view of stream ``name`` match the catalog's document ``meta``
        (None: gone) as of store revision ``as_of``, as another node changed it, and run
        pipelines for exactly the shards this node leads now. Idempotent: the cluster follower
        (cluster/follow.py) calls it for every changed stream, and for all of them after any
        shard-map change or resync. A document older than this node's own last write of the
        stream is ignored (checked under the locks: the write may land while this waits for
        them); the follower's watch brings the newer one."""
        async with self._admin_lock:
            if as_of < self.catalog.written.get(name, 0):
                return
            stream = self.streams.get(name)
            if meta is None or meta.status == "DELETING":
                if stream is not None:
                    await self._remove_here(stream)
                return
            if stream is None or stream.meta.stream_id != meta.stream_id:
                if stream is not None:  # deleted and created again under the same name
                    await self._remove_here(stream)
                stream = await self._open_stream(meta)
                log.info("stream.opened_here", stream=name, shards=len(stream.pipelines))
                self._watch_runner(stream)
                return
            async with stream.lock:
                if as_of < self.catalog.written.get(name, 0):
                    return
                changed = meta != stream.meta
                # Adopted even when equal: a document this node wrote itself may have closed
                # shards it leads (another node's switch) without its pipelines knowing.
                self._adopt(stream, meta)
                if changed:
                    stream.signal_reshaped()
                await self._sync_pipelines(stream)
                self._watch_runner(stream)

    async def _remove_here(self, stream: _Stream) -> None:
        """Another node deleted the stream: close its pipelines here and trash its files."""
        async with stream.lock:
            self._seal_holds.drop_stream(stream.meta.name)
            await self._close_stream(stream)
            self.streams.pop(stream.meta.name, None)
            stream.signal_reshaped()
        await self._move_to_trash(stream.directory, stream.meta.stream_id)
        log.info("stream.removed_here", stream=stream.meta.name)

    async def _sync_pipelines(self, stream: _Stream) -> None:
        """Start the pipelines of shards this node now leads; close those it no longer does.
        Caller holds ``stream.lock``."""
        if self._replicates(stream.meta):
            await self._sync_replicas(stream)
            return
        name = stream.meta.name
        for shard in stream.meta.shards:
            running = stream.pipelines.get(shard.shard_id)
            leads = self._leads(name, shard.shard_id)
            if leads and running is None:
                stream.pipelines[shard.shard_id] = await self._start_pipeline(stream, shard)
                log.info("shard.leading", stream=name, shard_id=shard.shard_id)
            elif not leads and running is not None:
                del stream.pipelines[shard.shard_id]
                await running.close()
                await running.close_log()
                log.info("shard.not_leading", stream=name, shard_id=shard.shard_id)

    def _replicates(self, meta: StreamMeta) -> bool:
        return self._replication is not None and meta.replication_factor > 1

    async def _sync_replicas(self, stream: _Stream) -> None:
        """Run a replica of each shard the controller placed here, stop those it moved away
        (their files stay), and lead those it names this node leader of. Caller holds
        ``stream.lock`` (or is opening ``stream``)."""
        wiring = self._replication
        assert wiring is not None and self._nursery is not None and self._node_id is not None
        wiring.refresh_ids()
        name = stream.meta.name
        for shard in stream.meta.shards:
            assignment = wiring.assignment(name, shard.shard_id)
            here = assignment is not None and self._node_id in assignment.replicas
            replica = stream.replicated.get(shard.shard_id)
            if here and replica is None:
                replica = await ReplicatedShard.open(
                    name,
                    shard,
                    layout.shard_dir(stream.directory, shard.shard_id),
                    self._node_id,
                    wiring.outbox,
                    self._log_config,
                    self.clock,
                )
                replica.keys = self.keyring
                replica.key_id_of = partial(_encryption_key_id, stream)
                replica.report_to_controller = wiring.report_to_controller
                await self._nursery.start(replica.run)
                wiring.host.add(replica.driver)
                stream.replicated[shard.shard_id] = replica
                log.info("shard.replica_started", stream=name, shard_id=shard.shard_id)
            elif not here and replica is not None:
                del stream.replicated[shard.shard_id]
                await self._stop_replica(replica)
                log.info("shard.replica_stopped", stream=name, shard_id=shard.shard_id)
                continue
            if replica is not None and assignment is not None:
                replica.adopt(shard)
                progress = stream.meta.reshard if stream.meta.status == "UPDATING" else None
                replica.reshard_id = None if progress is None else progress.get("id")
                replica.follow_assignment(assignment, wiring.lease_valid())

    async def _stop_replica(self, replica: ReplicatedShard) -> None:
        assert self._replication is not None
        self._replication.host.remove(replica.driver)
        await replica.close()

    @staticmethod
    def _shard_here(stream: _Stream, shard_id: str) -> ShardPipeline | ReplicatedShard | None:
        """The pipeline, or else the replica (led or followed), of ``shard_id`` on this node."""
        return stream.pipelines.get(shard_id) or stream.replicated.get(shard_id)

    def _led_replica(self, stream: _Stream, shard_id: str) -> ReplicatedShard | None:
        """The replica this node serves ``shard_id`` through: one it holds and leads."""
        replica = stream.replicated.get(shard_id)
        if replica is None:
            return None
        return (
            replica if isinstance(self.locator.locate(stream.meta.name, shard_id), Local) else None
        )

    # -- per-node limits ------------------------------------------------------------------------

    def shards_held(self) -> int:
        """Shards with a pipeline (open, or closed and readable), plus those being made."""
        held = sum(len(s.pipelines) + len(s.replicated) for s in self.streams.values())
        return held + self._shards_reserved

    @contextmanager
    def _reserve_shards(self, count: int, what: str) -> Iterator[None]:
        """Check ``count`` more shards against the budget and hold them while ``what`` runs
        (check and reservation are one step: no await between them). Raises
        LimitExceededError before anything is changed."""
        self.budget.check(self.shards_held(), count, what)
        self._shards_reserved += count
        try:
            yield
        finally:
            self._shards_reserved -= count

    def _report_limits(self) -> None:
        budget, held = self.budget, self.shards_held()
        log.info(
            "engine.limits",
            shards=held,
            shards_allowed=budget.shards_allowed,
            shards_max=budget.shards_max,
            rlimit_nofile=budget.nofile,
            segment_fds_max=budget.segment_fds,
            io_threads_max=self.config.io_threads_max,
        )
        for problem in budget.startup_problems(held):
            log.warning("engine.fd_limit_low", problem=problem)

    def _migrate_layout(self, metas: list[StreamMeta]) -> None:
        """Worker thread, at start: finish interrupted deletions, move by-name directories of
        older versions to the by-id layout (layout.py)."""
        data_dir = self.config.data_dir
        layout.empty_trash(data_dir)
        for meta in metas:
            layout.adopt_by_name_dir(
                data_dir, meta.name, meta.stream_id, [s.shard_id for s in meta.shards]
            )
        layout.retire_by_name_root(data_dir)

    def _stream_dir(self, meta: StreamMeta) -> Path:
        return layout.stream_dir(self.config.data_dir, meta.stream_id)

    async def _open_stream(self, meta: StreamMeta) -> _Stream:
        """Open every shard's log and start its pipeline. On failure what was opened is closed
        again and the error raised; the files and metadata stay (the caller decides)."""
        assert self._nursery is not None
        stream = _Stream(meta, self._stream_dir(meta), self.locator)
        try:
            await trio.to_thread.run_sync(layout.make_dir, stream.directory)
            if self._replicates(meta):
                await self._sync_replicas(stream)
            for shard in () if self._replicates(meta) else meta.shards:
                if self._leads(meta.name, shard.shard_id):
                    stream.pipelines[shard.shard_id] = await self._start_pipeline(stream, shard)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._close_stream(stream)
            raise
        self.streams[meta.name] = stream
        return stream

    def _leads(self, stream: str, shard_id: str) -> bool:
        return isinstance(self.locator.locate(stream, shard_id), Local)

    async def _start_pipeline(self, stream: _Stream, shard: ShardMeta) -> ShardPipeline:
        assert self._nursery is not None
        directory = layout.shard_dir(stream.directory, shard.shard_id)
        shard_log = await trio.to_thread.run_sync(self._open_log, directory)
        pipeline = ShardPipeline(
            stream.meta.name,
            shard,
            shard_log,
            self._pipeline_config,
            self.committer,
            io_pool=self._io_pool,
            clock=self.clock,
        )
        pipeline.keys = self.keyring
        pipeline.key_id_of = partial(_encryption_key_id, stream)
        await self._nursery.start(pipeline.run)  # its high watermark is the committer's
        return pipeline

    def _open_log(self, directory: Path) -> ShardLog:
        shard_log = ShardLog.open(directory, self._log_config, verify_all=False, fds=self._fds)
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
            await pipeline.close_log()
        for replica in stream.replicated.values():
            await self._stop_replica(replica)
        stream.replicated.clear()

    async def remove_unknown_streams(self, known_ids: set[str]) -> list[str]:
        """Cluster mode, at start: trash the directories of streams the catalog no longer
        holds (deleted while this node was down, so it never saw the delete); returns their
        ids. Stream ids are never reused, so a directory whose id is not in the catalog is
        garbage."""
        root = self.config.data_dir / layout.STREAMS_DIR
        here = {stream.meta.stream_id for stream in self.streams.values()}
        entries = await trio.to_thread.run_sync(
            lambda: sorted(root.iterdir()) if root.is_dir() else []
        )
        removed = [d.name for d in entries if d.is_dir() and d.name not in known_ids | here]
        for stream_id in removed:
            await self._move_to_trash(root / stream_id, stream_id)
            log.info("stream.removed_unknown", stream_id=stream_id)
        return removed

    async def _move_to_trash(self, directory: Path, label: str) -> None:
        trash = self.config.data_dir / layout.TRASH_DIR
        try:
            await trio.to_thread.run_sync(layout.remove_dir, directory, trash, label)
        except OSError as exc:  # a full disk may refuse the trash's directory entry
            log.warning("stream.trash_failed", directory=str(directory), error=str(exc))
            await trio.to_thread.run_sync(partial(shutil.rmtree, directory, ignore_errors=True))

    async def _finish_delete(self, meta: StreamMeta) -> None:
        await self._move_to_trash(self._stream_dir(meta), meta.stream_id)
        await self.catalog.remove(meta.name)
        log.info("stream.deleted", stream=meta.name)

    async def _retention_loop(self) -> None:
        while True:
            await trio.sleep(self.config.retention_check_interval_ms / 1000)
            self.apply_retention(now_ms())
            await self.expire_closed_shards(now_ms())

    async def expire_closed_shards(self, at_ms: int) -> list[str]:
        """Forget closed shards whose every record is past retention (closed before the
        cutoff), as Kinesis stops listing them: metadata, pipeline and files. Their children
        keep naming them as parents; readers and groups treat a missing parent as ended.
        Streams in a reshard are left for the next round. Returns the shard ids forgotten."""
        forgotten: list[str] = []
        for name, stream in list(self.streams.items()):
            cutoff = at_ms - stream.meta.retention_hours * 3_600_000
            expired = {  # of the shards here: in a cluster, each leader forgets its own
                s.shard_id
                for s in stream.meta.shards
                if s.closed_ms is not None
                and s.closed_ms < cutoff
                and s.shard_id in stream.pipelines
            }
            if not expired or stream.lock.locked() or stream.meta.status != "ACTIVE":
                continue
            async with stream.lock:
                if self.streams.get(name) is not stream or stream.meta.status != "ACTIVE":
                    continue
                stream.meta = await self.catalog.update(name, partial(_without, expired))
                for shard_id in sorted(expired):
                    pipeline = stream.pipelines.pop(shard_id)
                    await pipeline.close()
                    await pipeline.close_log()
                    await self._move_to_trash(
                        layout.shard_dir(stream.directory, shard_id),
                        f"{stream.meta.stream_id}-{shard_id}",
                    )
                    log.info("shard.expired", stream=name, shard_id=shard_id)
                forgotten += sorted(expired)
        return forgotten

    def apply_retention(self, at_ms: int) -> None:
        for stream in self.streams.values():
            cutoff = at_ms - stream.meta.retention_hours * 3_600_000
            for pipeline in stream.pipelines.values():
                pipeline.request_retention(cutoff)

    # -- admin ----------------------------------------------------------------------------------

    def _stream(self, name: str) -> _Stream:
        check_stream_name(name)
        if self._closing:  # not STREAM_NOT_FOUND: the stream exists, another node serves it
            raise ShuttingDownError(f"this node is stopping; stream {name!r} is served elsewhere")
        stream = self.streams.get(name)
        if stream is None or stream.meta.status == "DELETING":
            raise StreamNotFoundError(f"stream {name!r} not found", stream=name)
        return stream

    def stream_meta(self, name: str) -> StreamMeta:
        """The stream's current metadata (immutable; replaced on every change).

        Raises StreamNotFoundError, InvalidStreamNameError."""
        return self._stream(name).meta

    async def create_stream(
        self,
        name: str,
        shard_count: int,
        retention_hours: int,
        *,
        tags: dict[str, str] | None = None,
        mode: StreamMode = "PROVISIONED",
        replication_factor: int | None = None,
    ) -> None:
        """Raises InvalidArgumentError (and subclasses), LimitExceededError, StreamExistsError.

        ``replication_factor``: replicas per shard (cluster mode only), else the tag
        ``streamd:replication-factor`` (how Kinesis CreateStream asks), else the server's
        ``--replication-factor`` (at most the nodes live now), 1 in the embedded default."""
        check_stream_name(name)
        if replication_factor is None:
            replication_factor = self._default_replication_factor(tags or {})
        self._check_replication_factor(replication_factor)
        check_shard_count(shard_count)
        check_retention_hours(retention_hours)
        if mode not in ("PROVISIONED", "ON_DEMAND"):
            raise InvalidArgumentError(
                f"stream mode must be PROVISIONED or ON_DEMAND: {summary(mode)}"
            )
        tags = _changed_tags({}, tags or {}, [])
        what = f"creating stream {name!r} with {shard_count} shards"
        async with self._admin_lock:
            with self._reserve_shards(shard_count, what):
                meta = replace(
                    StreamMeta.new(name, shard_count, retention_hours, now_ms()),
                    tags=tags,
                    mode=mode,
                    replication_factor=replication_factor,
                )
                await self.catalog.create(meta)
                try:
                    await self._open_stream(meta)
                except BaseException as exc:  # nothing half-made: no ghost stream
                    with trio.CancelScope(shield=True):
                        await self._undo_create(meta, exc)
                    raise
        log.info("stream.created", stream=name, shards=shard_count, retention_hours=retention_hours)

    def _default_replication_factor(self, tags: dict[str, str]) -> int:
        asked = tags.get(RF_TAG)
        if asked is not None:
            if not asked.isdigit() or len(asked) > 1:
                raise InvalidArgumentError(f"tag {RF_TAG} must be a number 1..{RF_MAX}")
            return int(asked)
        if self._replication is None:
            return 1
        return max(1, min(self.config.replication_factor, self._replication.live_nodes()))

    def _check_replication_factor(self, replication_factor: int) -> None:
        if type(replication_factor) is not int or not 1 <= replication_factor <= RF_MAX:
            raise InvalidArgumentError(
                f"replication factor must be an integer in 1..{RF_MAX}: "
                f"{summary(replication_factor)}"
            )
        if replication_factor > 1 and self._replication is None:
            raise InvalidArgumentError(
                f"replication factor {replication_factor} needs cluster mode (serve --cluster); "
                "a single node holds one copy"
            )

    async def _undo_create(self, meta: StreamMeta, exc: BaseException) -> None:
        log.error("stream.create_failed", stream=meta.name, error=repr(exc)[:200])
        await self._finish_delete(meta)

    async def delete_stream(self, name: str) -> None:
        """Raises StreamNotFoundError, InvalidStreamNameError, StorageFullError (the disk is
        so full that even after the stream's files were removed the metadata store cannot
        record the delete; the stream is then gone from this process, and a retry finishes)."""
        if name in self._half_deleted:
            async with self._admin_lock:
                await self.catalog.remove(name)
                self._half_deleted.pop(name, None)
            log.info("stream.deleted", stream=name)
            return
        stream = self._stream(name)
        async with self._admin_lock, stream.lock:
            stream = self._stream(name)
            try:
                stream.meta = await self.catalog.update(
                    name, lambda m: replace(m, status="DELETING")
                )
            except StorageFullError as exc:
                await self._delete_on_full_disk(stream, exc)
                return
            await self._close_stream(stream)
            del self.streams[name]
            stream.signal_reshaped()
            await self._finish_delete(stream.meta)

    async def _delete_on_full_disk(self, stream: _Stream, exc: StorageFullError) -> None:
        """Deleting is how an operator frees space, so a full disk must not refuse it: the
        intent (DELETING) could not be recorded, so the stream's files go first (freeing the
        space), then its metadata in one transaction. A crash in between leaves the stream
        listed and empty: the delete was not acknowledged, and a retry completes it."""
        name = stream.meta.name
        log.warning("stream.delete_freeing_space_first", stream=name, error=exc.message)
        await self._close_stream(stream)
        del self.streams[name]
        stream.signal_reshaped()
        await self._move_to_trash(stream.directory, stream.meta.stream_id)
        try:
            await self.catalog.remove(name)
        except StorageFullError:
            self._half_deleted[name] = stream.meta
            raise
        log.info("stream.deleted", stream=name)

    def list_streams(self) -> list[str]:
        return sorted(n for n, s in self.streams.items() if s.meta.status != "DELETING")

    def describe_stream(self, name: str) -> dict[str, Any]:
        """Raises StreamNotFoundError, InvalidStreamNameError.

        Cluster mode: every shard also names its ``leader`` (node id) and ``leader_address``
        (native HOST:PORT), None while it is unavailable; clients route by them."""
        stream = self._stream(name)
        described = stream.meta.describe()
        described["status"] = self.status_of(name)
        if self.clustered:
            for shard in described["shards"]:
                location = self.locator.locate(name, shard["shard_id"])
                if isinstance(location, Local):
                    shard["leader"], shard["leader_address"] = self.locator.self_node()
                elif isinstance(location, Remote):
                    shard["leader"], shard["leader_address"] = location.node_id, location.address
                else:
                    shard["leader"] = shard["leader_address"] = None
                if self._replication is not None:
                    assignment = self._replication.assignment(name, shard["shard_id"])
                    shard["replicas"] = list(assignment.replicas) if assignment else []
            described["replication_factor"] = stream.meta.replication_factor
        return described

    def status_of(self, name: str) -> str:
        """The stream's status as the front ends report it: the catalog's, except that in
        cluster mode a new stream is CREATING until the controller has placed all its open
        shards (so a client that waits for ACTIVE finds every shard served)."""
        meta = self._stream(name).meta
        if self.clustered and meta.status == "ACTIVE":
            for shard in meta.open_shards():
                location = self.locator.locate(name, shard.shard_id)
                if not isinstance(location, Local | Remote) and location.unplaced:
                    return "CREATING"
        return meta.status

    async def update_retention(self, name: str, retention_hours: int) -> None:
        """Raises StreamNotFoundError, InvalidArgumentError."""
        check_stream_name(name)
        check_retention_hours(retention_hours)
        stream = self._stream(name)
        async with stream.lock:  # a reshard step replaces stream.meta: never interleave
            stream = self._stream(name)
            stream.meta = await self.catalog.update(
                name, lambda m: replace(_active(m), retention_hours=retention_hours)
            )
        log.info("stream.retention_updated", stream=name, retention_hours=retention_hours)

    async def set_encryption(self, name: str, key_id: str | None) -> None:
        """Start (``key_id``: a keyring key, as alias, key id or ARN) or stop (None) sealing
        new batches of a stream; stored batches keep the key they name, so all stay readable.
        Raises StreamNotFoundError, InvalidArgumentError (no keyring, an unknown key).
        The shards here and on other nodes read the key from the stream's metadata per batch."""
        check_stream_name(name)
        if key_id is not None:
            if self.keyring is None:
                raise InvalidArgumentError(
                    "encryption at rest needs a keyring: start the server with --keyring FILE"
                )
            if not isinstance(key_id, str) or not self.keyring.has(key_id):
                raise InvalidArgumentError(f"the keyring holds no key {summary(key_id)}")
        stream = self._stream(name)
        async with stream.lock:  # a reshard step replaces stream.meta: never interleave
            stream = self._stream(name)
            stream.meta = await self.catalog.update(
                name, lambda m: replace(_active(m), encryption_key_id=key_id)
            )
        log.info("stream.encryption_set", stream=name, key_id=key_id)

    async def update_stream_mode(self, name: str, mode: StreamMode) -> None:
        """PROVISIONED <-> ON_DEMAND (an ON_DEMAND stream's shards are split and merged by the
        scaler, scaler.py). Raises StreamNotFoundError, InvalidArgumentError,
        ResourceInUseError (a reshard runs)."""
        if mode not in ("PROVISIONED", "ON_DEMAND"):
            raise InvalidArgumentError(
                f"stream mode must be PROVISIONED or ON_DEMAND: {summary(mode)}"
            )
        stream = self._stream(name)
        async with stream.lock:  # a reshard step replaces stream.meta: never interleave
            stream = self._stream(name)
            stream.meta = await self.catalog.update(name, lambda m: replace(_active(m), mode=mode))
        log.info("stream.mode_updated", stream=name, mode=mode)

    async def update_tags(self, name: str, add: dict[str, str], remove: Sequence[str]) -> None:
        """Add (or overwrite) and remove tags. Raises StreamNotFoundError, InvalidArgumentError,
        LimitExceededError (more than 50 tags)."""
        stream = self._stream(name)
        async with stream.lock:  # a reshard step replaces stream.meta: never interleave
            stream = self._stream(name)
            _changed_tags(stream.meta.tags, add, remove)  # refuse before touching the store
            stream.meta = await self.catalog.update(
                name, lambda m: replace(m, tags=_changed_tags(m.tags, add, remove))
            )
        log.info("stream.tags_updated", stream=name, added=sorted(add), removed=sorted(remove))

    async def update_settings(
        self, name: str, change: Callable[[StreamMeta], StreamMeta], *, setting: str
    ) -> StreamMeta:
        """Apply ``change`` to the stream's document: settings no pipeline holds (enhanced
        monitoring, resource policy, max record size; the front ends read them from
        ``stream_meta``). ``change`` may raise to refuse. Raises StreamNotFoundError."""
        stream = self._stream(name)
        async with stream.lock:  # a reshard step replaces stream.meta: never interleave
            stream = self._stream(name)
            stream.meta = await self.catalog.update(name, change)
        log.info("stream.settings_updated", stream=name, setting=setting)
        return stream.meta

    # -- resharding -----------------------------------------------------------------------------

    async def split_shard(self, name: str, shard_id: str, at: int | None = None) -> list[str]:
        """Close ``shard_id`` and open two children split at hash key ``at`` (the right child's
        first key; default the midpoint). Returns the children's ids, left first.

        Raises StreamNotFoundError, ShardNotFoundError, ResourceInUseError (another reshard
        runs), InvalidArgumentError (closed shard, key outside the range); in cluster mode also
        NotLeaderError, ShardUnavailableError (a parent's node is down or it is being placed),
        MetadataUnavailableError.
        """
        stream = self._busy_or(name)
        async with stream.lock:
            await self._refresh(stream)
            step = reshard.check_split(_active(self._stream(name).meta), shard_id, at)
            with self._reserve_shards(2, f"splitting {shard_id} of {name!r}"), self._running(name):
                reshard_id = await self._begin_reshard(
                    stream,
                    {"kind": "split", "target": None, "total": 1},
                    lambda m: reshard.check_split(m, shard_id, at),
                )
                await self._apply_step_or_abort(stream, step, last=True, reshard_id=reshard_id)
        return [c.shard_id for c in stream.meta.children_of(shard_id)]

    async def merge_shards(self, name: str, shard_id: str, adjacent_shard_id: str) -> str:
        """Close two adjacent open shards and open one child covering both. Returns its id.

        Raises StreamNotFoundError, ShardNotFoundError, ResourceInUseError,
        InvalidArgumentError (closed or non-adjacent shards); in cluster mode as split_shard.
        """
        stream = self._busy_or(name)
        async with stream.lock:
            await self._refresh(stream)
            step = reshard.check_merge(
                _active(self._stream(name).meta), shard_id, adjacent_shard_id
            )
            with self._reserve_shards(1, f"merging {shard_id} of {name!r}"), self._running(name):
                reshard_id = await self._begin_reshard(
                    stream,
                    {"kind": "merge", "target": None, "total": 1},
                    lambda m: reshard.check_merge(m, shard_id, adjacent_shard_id),
                )
                await self._apply_step_or_abort(stream, step, last=True, reshard_id=reshard_id)
        (child,) = stream.meta.children_of(shard_id)
        return child.shard_id

    async def resize_stream(self, name: str, shard_count: int) -> int:
        """Start a uniform resize to ``shard_count`` even ranges; returns the number of splits
        and merges planned. They run in the background (status UPDATING, progress in
        ``describe_stream``'s "reshard") and resume after a restart (in cluster mode: on this
        node, or on another if this one dies).

        Raises StreamNotFoundError, ResourceInUseError, InvalidArgumentError (out of bounds).
        """
        stream = self._busy_or(name)
        async with stream.lock:
            await self._refresh(stream)
            meta = _active(self._stream(name).meta)
            reshard.check_resize(meta, shard_count)
            total = reshard.resize_step_count(meta, shard_count)
            if total == 0:
                return 0
            added = reshard.resize_shards_added(meta, shard_count)  # children; parents stay
            self.budget.check(self.shards_held(), added, f"resizing {name!r} to {shard_count}")
            with self._running(name, keep=True):
                reshard_id = await self._begin_reshard(
                    stream,
                    {"kind": "resize", "target": shard_count, "total": total},
                    lambda m: reshard.check_resize(m, shard_count),
                )
        assert self._nursery is not None
        self._nursery.start_soon(self._run_resize, stream, shard_count, reshard_id)
        return total

    def _busy_or(self, name: str) -> _Stream:
        """The stream, unless another metadata change holds it. Raises ResourceInUseError."""
        stream = self._stream(name)
        # Cluster mode: the follower holds the lock for a moment whenever it applies the
        # catalog, so only a reshard this node runs refuses at once (others: ``_active``).
        busy = name in self._runs if self.clustered else stream.lock.locked()
        if busy:
            raise ResourceInUseError(f"stream {name!r} is being changed; try again shortly")
        return stream

    async def _refresh(self, stream: _Stream) -> None:
        """Cluster mode: adopt the stream's document as it is in the store now (the follower's
        copy may lag behind, or even behind what this node itself wrote last)."""
        if not self.clustered:
            return
        fresh = await self.catalog.get(stream.meta.name)
        if fresh is not None and fresh.stream_id == stream.meta.stream_id:
            self._adopt(stream, fresh)

    @contextmanager
    def _running(self, name: str, *, keep: bool = False) -> Iterator[None]:
        """Mark this node as running the reshard of ``name`` (so the follower never starts a
        takeover of it here). ``keep``: the mark stays on success (a resize task ends it).
        Raises ResourceInUseError if this node runs one already."""
        if name in self._runs:
            raise ResourceInUseError(f"stream {name!r} is being resharded; try again shortly")
        self._runs.add(name)
        try:
            yield
        except BaseException:
            self._runs.discard(name)
            raise
        if not keep:
            self._runs.discard(name)

    async def _resume(self, stream: _Stream) -> None:
        """At start: go on with an interrupted resize; forget an interrupted split or merge
        (its switch is one compare-and-swap that also ends UPDATING, so it never happened).
        Cluster mode: only if this node ran it or its runner's node is not live, through a
        takeover (``_watch_runner``)."""
        meta = stream.meta
        if meta.status != "UPDATING":
            return
        if self.clustered:
            self._watch_runner(stream, at_start=True)
            return
        progress = meta.reshard or {}
        if progress.get("kind") == "resize":
            log.info("reshard.resuming", stream=meta.name, **progress)
            assert self._nursery is not None
            self._runs.add(meta.name)
            self._nursery.start_soon(self._run_resize, stream, int(progress["target"]), None)
        else:
            await self._end_reshard(stream)

    def _live(self, node_id: str) -> bool:
        return node_id in self.locator.node_addresses()

    def _watch_runner(self, stream: _Stream, *, at_start: bool = False) -> None:
        """Cluster mode: take the stream's reshard over if it is UPDATING and its runner is a
        node that is not live, or (``at_start``) this node in an earlier life; never while
        this node runs it. (The follower may apply an older document than this node last
        wrote, which can name this node as the runner of a reshard that already ended.)"""
        name, me = stream.meta.name, self._node_id
        if me is None or name in self._runs:
            return
        if not at_start and reshard_fence.runner_of(stream.meta) == me:
            return
        if not reshard_fence.may_take_over(stream.meta, me, self._live):
            return
        assert self._nursery is not None
        self._runs.add(name)
        self._nursery.start_soon(self._take_over, stream)

    async def _take_over(self, stream: _Stream) -> None:
        """Rewrite the runner to this node (one compare-and-swap: of several nodes trying, one
        wins and the others see a live runner), then resume the resize, or end the split or
        merge whose switch never came. A failure is logged; the follower's next pass retries."""
        name, me = stream.meta.name, self._node_id
        assert me is not None
        resizing = False
        try:
            async with stream.lock:
                if self.streams.get(name) is not stream:
                    return
                try:
                    meta = await self.catalog.update(
                        name, lambda m: reshard_fence.taken_over(m, me, self._live)
                    )
                except (ResourceInUseError, StreamNotFoundError) as exc:  # NotRunnerError too
                    log.info("reshard.not_taken_over", stream=name, reason=exc.message)
                    return
                self._adopt(stream, meta)
                progress = meta.reshard
                assert progress is not None
                log.warning(
                    "reshard.taken_over",
                    stream=name,
                    kind=progress.get("kind"),
                    done=progress.get("done"),
                    total=progress.get("total"),
                )
                if progress.get("kind") == "resize":
                    assert self._nursery is not None
                    self._nursery.start_soon(
                        self._run_resize, stream, int(progress["target"]), progress["id"]
                    )
                    resizing = True
                else:
                    await self._end_reshard(stream, progress["id"])
        except StreamdError as exc:
            log.warning("reshard.take_over_failed", stream=name, code=exc.code, error=exc.message)
        finally:
            if not resizing:
                self._runs.discard(name)

    async def _begin_reshard(
        self,
        stream: _Stream,
        progress: dict[str, Any],
        validate: Callable[[StreamMeta], object] | None = None,
    ) -> str | None:
        """Mark the stream UPDATING (refused unless ACTIVE, and unless ``validate`` accepts
        the document as it is in the store): the intent, kept across restarts. Cluster mode:
        the progress also names this node as the runner and the reshard's id, returned (None
        in the embedded default)."""
        me = self._node_id

        def begin(meta: StreamMeta) -> StreamMeta:
            meta = _active(meta)
            if validate is not None:
                validate(meta)
            if me is None:
                return replace(meta, status="UPDATING", reshard={**progress, "done": 0})
            return replace(
                meta, status="UPDATING", reshard=reshard_fence.begin_progress(progress, me)
            )

        meta = await self.catalog.update(stream.meta.name, begin)
        self._adopt(stream, meta)
        log.info("reshard.started", stream=meta.name, runner=me, **progress)
        return None if me is None or meta.reshard is None else str(meta.reshard["id"])

    async def _end_reshard(self, stream: _Stream, reshard_id: str | None = None) -> None:
        """Back to ACTIVE. Cluster mode (``reshard_id``): only while this node still runs that
        reshard (raises NotRunnerError, or ResourceInUseError when it ended already)."""
        me = self._node_id

        def end(meta: StreamMeta) -> StreamMeta:
            if reshard_id is not None and me is not None:
                reshard_fence.check_runner(meta, reshard_id, me)
            return replace(meta, status="ACTIVE", reshard=None)

        self._adopt(stream, await self.catalog.update(stream.meta.name, end))
        log.info("reshard.ended", stream=stream.meta.name)

    def _adopt(self, stream: _Stream, meta: StreamMeta) -> None:
        """Take ``meta``, the catalog's document as this node just wrote or read it, as the
        stream's: pipelines of shards it closed adopt their close (their seals end), and the
        routes follow. Caller holds ``stream.lock``."""
        stream.meta = meta
        for shard in meta.shards:
            pipeline = self._shard_here(stream, shard.shard_id)
            if pipeline is not None and not shard.is_open and pipeline.shard.is_open:
                self._seal_holds.drop(meta.name, shard.shard_id)
                pipeline.close_shard(shard)
        stream.reroute()

    async def _apply_step_or_abort(
        self, stream: _Stream, step: reshard.Step, *, last: bool, reshard_id: str | None
    ) -> None:
        try:
            await self._apply_step(stream, step, last=last, reshard_id=reshard_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                if self.streams.get(stream.meta.name) is stream:
                    if reshard_id is None:
                        await self._end_reshard(stream)
                    else:
                        await self._end_reshard_quietly(stream, reshard_id)
            raise

    async def _end_reshard_quietly(self, stream: _Stream, reshard_id: str) -> None:
        """Cluster mode, after a failed step: end the reshard unless it ended already (the
        switch may have applied although its answer was lost) or another node runs it; a
        failure is logged (the runner's takeover at the next start ends it)."""
        try:
            await self._end_reshard(stream, reshard_id)
        except StreamdError as exc:
            log.warning("reshard.end_skipped", stream=stream.meta.name, error=exc.message)

    async def _apply_step(
        self, stream: _Stream, step: reshard.Step, *, last: bool, reshard_id: str | None = None
    ) -> None:
        """One split or merge, atomic for writers and durable as one metadata write.

        The parents are sealed (new writes get SHARD_CLOSED; server-routed ones wait here),
        their queues drain into their logs and are synced; then one compare-and-swap closes
        them at those ending offsets and adds the children. Before it nothing changed; after
        it the children are opened and take the routes. A failure before the switch unseals.
        Caller holds ``stream.lock``. Cluster mode (``reshard_id``): ``_apply_step_anywhere``.
        """
        if reshard_id is not None:
            await self._apply_step_anywhere(stream, step, last=last, reshard_id=reshard_id)
            return
        started = time.perf_counter()
        name = stream.meta.name
        parents = [stream.pipeline(p) for p in step.parents]
        switched = False
        try:
            endings = tuple([await p.seal(_SEAL_TIMEOUT_S) for p in parents])

            def switch(meta: StreamMeta) -> StreamMeta:
                if meta.status != "UPDATING" or meta.reshard is None:
                    raise ResourceInUseError(f"stream {meta.name!r} is no longer resharding")
                new = reshard.apply(meta, step, endings, now_ms())
                if last:
                    return replace(new, status="ACTIVE", reshard=None)
                return replace(new, reshard={**meta.reshard, "done": meta.reshard["done"] + 1})

            new_meta = await self.catalog.update(stream.meta.name, switch)
            switched = True
            with trio.CancelScope(shield=True):  # the switch is durable: make it live
                known = set(stream.pipelines)
                for shard in new_meta.shards:
                    if shard.shard_id not in known and self._leads(name, shard.shard_id):
                        stream.pipelines[shard.shard_id] = await self._start_pipeline(stream, shard)
                stream.meta = new_meta
                for parent in parents:
                    closed = new_meta.shard(parent.shard.shard_id)
                    assert closed is not None
                    parent.close_shard(closed)
                stream.reroute()
        finally:
            if not switched:
                for parent in parents:
                    parent.unseal()
            stream.signal_reshaped()
        self._step_done(stream, step, endings, started)

    def _step_done(
        self, stream: _Stream, step: reshard.Step, endings: Sequence[int], started: float
    ) -> None:
        metrics.RESHARD_STEPS.labels(step.kind).inc()
        metrics.RESHARD_SECONDS.observe(time.perf_counter() - started)
        log.info(
            "reshard.step",
            stream=stream.meta.name,
            kind=step.kind,
            parents=list(step.parents),
            ending_offsets=list(endings),
            children=[c.shard_id for c in stream.meta.children_of(step.parents[0])],
            open_shards=len(stream.route_shards),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _apply_step_anywhere(
        self, stream: _Stream, step: reshard.Step, *, last: bool, reshard_id: str
    ) -> None:
        """Cluster mode: one step run from this node, whichever nodes lead the parents.

        Each parent is sealed by its leader (here, or through the native op ``seal_shard``)
        under this attempt's token and a hold (cluster/seals.py); the switch is the same one
        compare-and-swap, which also checks that this node still runs the reshard and that no
        parent's hold expired (cluster/reshard_fence.py). Its children's shard documents go in
        the same txn, unassigned: the controller places them and their leaders open them.
        Refused before the switch: the parents are unsealed. The switch's outcome unknown (the
        store did not answer): the parents stay sealed and each one's hold decides on the
        catalog, so a parent is never unsealed behind a switch that applied."""
        started = time.perf_counter()
        name, me = stream.meta.name, self._node_id
        assert me is not None
        token = reshard_fence.new_token(reshard_id)
        sealed: list[tuple[str, Location]] = []
        endings: list[int] = []
        outcome = "undo"
        try:
            for parent in step.parents:
                endings.append(await self._seal_parent(stream, parent, token, sealed))
            refused = False

            def switch(meta: StreamMeta) -> StreamMeta:
                nonlocal refused
                try:
                    progress = reshard_fence.check_switch(meta, reshard_id, me, token)
                    new = reshard.apply(meta, step, tuple(endings), now_ms())
                except BaseException:
                    refused = True
                    raise
                if last:
                    return replace(new, status="ACTIVE", reshard=None)
                return replace(new, reshard={**progress, "done": progress["done"] + 1})

            try:
                new_meta = await self.catalog.update(name, switch)
            except BaseException as exc:
                if not (refused or isinstance(exc, StreamNotFoundError)):
                    outcome = "unknown"
                raise
            outcome = "switched"
            self._adopt(stream, new_meta)  # the switch is durable: make it live here
        finally:
            with trio.CancelScope(shield=True):
                if outcome == "undo":
                    await self._unseal_parents(stream, sealed, token)
                elif outcome == "unknown":
                    log.warning("reshard.switch_unknown", stream=name, parents=list(step.parents))
            stream.signal_reshaped()
        self._step_done(stream, step, endings, started)

    async def _seal_parent(
        self, stream: _Stream, shard_id: str, token: str, sealed: list[tuple[str, Location]]
    ) -> int:
        """Seal one parent where it is led; returns its ending offset. ``sealed`` notes each
        parent asked (before the answer: an interrupted request may have sealed it)."""
        name = stream.meta.name
        if shard_id in stream.pipelines or self._led_replica(stream, shard_id):
            sealed.append((shard_id, LOCAL))
            return await self.seal_shard(name, shard_id, hold_ms=SEAL_HOLD_MS, token=token)
        location = self.locator.locate(name, shard_id)
        if not isinstance(location, Remote) or self._peers is None:
            raise located_error(name, shard_id, location)
        sealed.append((shard_id, location))
        return await self._peers.seal_shard(
            location.address, name, shard_id, SEAL_HOLD_MS, token, timeout_s=_SEAL_TIMEOUT_S + 5
        )

    async def _unseal_parents(
        self, stream: _Stream, sealed: list[tuple[str, Location]], token: str
    ) -> None:
        name = stream.meta.name
        for shard_id, location in sealed:
            if not isinstance(location, Remote):
                self.unseal_shard(name, shard_id, token=token)
                continue
            assert self._peers is not None
            try:
                with trio.fail_after(_UNSEAL_TIMEOUT_S):
                    await self._peers.unseal_shard(location.address, name, shard_id, token)
            except (StreamdError, trio.TooSlowError) as exc:  # its hold ends it
                log.warning("reshard.unseal_failed", stream=name, shard_id=shard_id, error=str(exc))

    async def seal_shard(self, name: str, shard_id: str, *, hold_ms: int, token: str) -> int:
        """Cluster mode, for the node running a reshard step: seal a shard this node leads
        (ShardPipeline.seal) and return its ending offset. The seal lasts until the catalog
        closes the shard, ``unseal_shard`` with the same token, a newer seal, or ``hold_ms``
        running out, after which this node decides on the catalog (``_release_seal``).

        Raises InvalidArgumentError (the embedded default; a hold or token out of bounds; a
        closed shard), StreamNotFoundError, ShardNotFoundError, NotLeaderError,
        ShardUnavailableError, and what ShardPipeline.seal raises (then it is unsealed)."""
        if not self.clustered:
            raise InvalidArgumentError("seal_shard is an operation between the nodes of a cluster")
        if not 1 <= hold_ms <= SEAL_HOLD_MS_MAX:
            raise InvalidArgumentError(f"hold_ms must be 1..{SEAL_HOLD_MS_MAX}: {hold_ms}")
        if not 1 <= len(token) <= _TOKEN_CHARS_MAX:
            raise InvalidArgumentError(f"token must be 1..{_TOKEN_CHARS_MAX} characters")
        stream = self._stream(name)
        pipeline = self._led_replica(stream, shard_id) or stream.pipeline(shard_id)
        if not pipeline.shard.is_open:
            raise InvalidArgumentError(f"shard {shard_id} is closed", shard_id=shard_id)
        self._seal_holds.drop(name, shard_id)
        try:
            ending = await pipeline.seal(_SEAL_TIMEOUT_S)
        except BaseException:
            if pipeline.shard.is_open:
                pipeline.unseal()
            stream.signal_reshaped()
            raise
        assert self._nursery is not None
        self._seal_holds.hold(self._nursery, name, shard_id, token, hold_ms / 1000)
        log.info("reshard.sealed", stream=name, shard_id=shard_id, ending_offset=ending)
        return ending

    def unseal_shard(self, name: str, shard_id: str, *, token: str) -> bool:
        """Undo ``seal_shard`` (the runner's step was refused before its switch). Only the
        seal of that token: a newer one stays. Returns whether a seal ended."""
        if not self._seal_holds.drop(name, shard_id, token):
            return False
        stream = self.streams.get(name)
        pipeline = None if stream is None else self._shard_here(stream, shard_id)
        if stream is not None and pipeline is not None and pipeline.shard.is_open:
            pipeline.unseal()
            stream.signal_reshaped()
        return True

    async def _release_seal(self, name: str, shard_id: str, token: str) -> None:
        """A seal's hold expired: decide on the catalog (reshard_fence.release_decision). The
        shard closed: it stays sealed (the follower adopts the close). The step may still
        switch: list the token as released in the same compare-and-swap that reads the
        document, then unseal, so that switch is refused. Otherwise unseal. Raises
        MetadataUnavailableError (SealHolds asks again)."""
        stream = self.streams.get(name)
        if stream is None:
            return
        stream_id = stream.meta.stream_id
        decided = reshard_fence.Release.UNSEAL

        def mark(meta: StreamMeta) -> StreamMeta:
            nonlocal decided
            decided = reshard_fence.release_decision(meta, stream_id, shard_id, token)
            if decided is not reshard_fence.Release.MARK:
                raise _NoWrite
            return reshard_fence.with_released(meta, token)

        try:
            await self.catalog.update(name, mark)
        except _NoWrite:
            pass
        except StreamNotFoundError:
            decided = reshard_fence.Release.UNSEAL
        log.warning("reshard.seal_released", stream=name, shard_id=shard_id, decision=decided.value)
        if decided is reshard_fence.Release.CLOSED:
            return
        pipeline = self._shard_here(stream, shard_id)
        if pipeline is not None and pipeline.shard.is_open:
            pipeline.unseal()
            stream.signal_reshaped()

    async def _run_resize(self, stream: _Stream, target: int, reshard_id: str | None) -> None:
        """Background: apply resize steps one by one until the open shards are ``target`` even
        ranges. A step that fails is retried; after repeated failures the resize stops, the
        stream goes back to ACTIVE in the shape reached, and the failure is logged. Cluster
        mode: a transient failure (a parent's node down, a child not placed yet, etcd away)
        is retried for up to _RESIZE_STEP_WAIT_S; another node taking over stops it quietly."""
        name = stream.meta.name
        with trio.CancelScope() as scope:
            self._resize_scopes.add(scope)
            try:
                await self._resize_steps(stream, target, reshard_id)
            except reshard_fence.NotRunnerError as exc:
                log.warning("reshard.resize_handed_over", stream=name, error=exc.message)
            except StreamdError as exc:
                log.error("reshard.resize_failed", stream=name, code=exc.code, error=exc.message)
                try:
                    async with stream.lock:
                        if self.streams.get(name) is stream:
                            await self._end_reshard(stream, reshard_id)
                except StreamdError as end_exc:  # stays UPDATING: the next start resumes it
                    log.error("reshard.end_failed", stream=name, error=end_exc.message)
            except Exception:  # a bug or a failing disk must not take the engine down
                log.exception("reshard.resize_crashed", stream=name)
            finally:
                self._resize_scopes.discard(scope)
                self._runs.discard(name)

    async def _resize_steps(self, stream: _Stream, target: int, reshard_id: str | None) -> None:
        """Each attempt holds ``stream.lock``; the pause between attempts does not (so this
        node's follower can open the children it was given meanwhile)."""
        name = stream.meta.name
        while True:
            first_try = trio.current_time()
            for attempt in itertools.count(1):
                step: reshard.Step | None = None
                try:
                    async with stream.lock:
                        if not await self._still_resizing(stream, reshard_id):
                            return
                        step = reshard.next_resize_step(stream.meta, target)
                        if step is None:
                            await self._end_reshard(stream, reshard_id)
                            return
                        last = reshard.resize_step_count(stream.meta, target) == 1
                        await self._apply_step(stream, step, last=last, reshard_id=reshard_id)
                    break
                except reshard_fence.NotRunnerError:
                    raise
                except StreamdError as exc:
                    log.warning("reshard.step_failed", stream=name, attempt=attempt, error=str(exc))
                    if not self._retry_step(exc, attempt, first_try):
                        raise InternalError(f"resize step {step} failed: {exc}") from exc
                await trio.sleep(min(0.1 * attempt, _RESIZE_PAUSE_S_MAX))

    async def _still_resizing(self, stream: _Stream, reshard_id: str | None) -> bool:
        """Whether the resize goes on; cluster mode: from the document as it is in the store
        now (adopted), and only while this node runs it (raises NotRunnerError)."""
        name = stream.meta.name
        if self.streams.get(name) is not stream:
            return False
        if reshard_id is not None:
            fresh = await self.catalog.get(name)
            if fresh is None or fresh.stream_id != stream.meta.stream_id:
                return False
            self._adopt(stream, fresh)
            if fresh.status != "UPDATING":
                return False
            assert self._node_id is not None
            reshard_fence.check_runner(fresh, reshard_id, self._node_id)
        return stream.meta.status == "UPDATING"

    def _retry_step(self, exc: StreamdError, attempt: int, first_try: float) -> bool:
        if attempt < _RESIZE_STEP_ATTEMPTS:
            return True
        transient = exc.retryable or isinstance(exc, reshard_fence.SealReleasedError)
        return (
            self.clustered and transient and trio.current_time() - first_try < _RESIZE_STEP_WAIT_S
        )

    # -- repairs --------------------------------------------------------------------------------

    async def quarantine_range(
        self, name: str, shard_id: str, from_sequence: str, to_sequence: str
    ) -> dict[str, Any]:
        """Move a damaged range of a shard aside (records ``from_sequence`` to ``to_sequence``,
        both included) so that reads skip it; docs/operations.md, "Damaged data".

        Raises StreamNotFoundError, ShardNotFoundError, InvalidSequenceNumberError (malformed,
        another shard's), InvalidArgumentError (not a wholly damaged range, past the tip),
        StorageFullError.
        """
        pipeline = self._stream(name).pipeline(shard_id)
        base, last = (_offset_in(pipeline.shard, s) for s in (from_sequence, to_sequence))
        if last < base:
            raise InvalidArgumentError(f"--to {to_sequence} comes before --from {from_sequence}")
        known = pipeline.log.quarantined_at(base) == (base, last + 1)
        entry = await pipeline.quarantine(base, last + 1)
        answer = {
            "stream": name,
            "shard_id": shard_id,
            "from_sequence": pipeline.sequence_of(base),
            "to_sequence": pipeline.sequence_of(last),
            "base_offset": entry.base_offset,
            "next_offset": entry.next_offset,
            "records": entry.next_offset - entry.base_offset,
            "bytes": entry.size_bytes,
            "file": str(pipeline.log.directory / entry.file),
            "already": known,
        }
        if not known:
            metrics.QUARANTINED_RANGES.labels(name).inc()
            metrics.QUARANTINED_RECORDS.labels(name).inc(entry.next_offset - entry.base_offset)
            log.warning("shard.quarantined", **answer)
        return answer

    # -- data -----------------------------------------------------------------------------------

    async def put_records(
        self, name: str, records: Sequence[RecordIn], *, forward: bool = True
    ) -> list[PutOutcome]:
        """Route validated records to shards and wait for each shard's commit.

        Records are enqueued on every shard before any wait, so shards commit in parallel.
        Per-record failures (throttling, full disk) come back in the outcomes. Cluster mode:
        the records of shards another node leads are forwarded to it in one request per node
        (``forward``; a forwarded request is not forwarded again: its records for shards that
        moved meanwhile get NOT_LEADER or SHARD_UNAVAILABLE, which the first node's caller
        retries). Raises StreamNotFoundError.
        """
        outcomes: list[PutOutcome] = [PutOutcome()] * len(records)
        pending = list(range(len(records)))
        deadline = trio.current_time() + _RESHAPE_WAIT_S
        rounds = _CLUSTER_REROUTE_ROUNDS_MAX if self.clustered else _REROUTE_ROUNDS_MAX
        for round_no in range(rounds):
            stream = self._stream(name)
            reshaped = stream.reshaped
            pending = await self._put_round(stream, records, pending, outcomes, forward)
            if not pending or not forward or trio.current_time() >= deadline:
                # What is left carries SHARD_CLOSED (or, in a cluster, NOT_LEADER or
                # SHARD_UNAVAILABLE), all retryable. A forwarded request does not wait: the
                # node that forwarded it waits for the new map and routes again.
                break
            # Their shards were being closed by a reshard: wait for the new map, route again.
            # In a cluster the new map may come from another node (or the step be undone
            # there), so this node also looks again after a pause.
            wake_at = deadline
            if self.clustered:
                pause_s = min(_REROUTE_PAUSE_S * 2**round_no, 1.0)
                wake_at = min(deadline, trio.current_time() + pause_s)
            with trio.move_on_at(wake_at):
                await reshaped.wait()
        return outcomes

    async def _put_round(
        self,
        stream: _Stream,
        records: Sequence[RecordIn],
        indexes_in: list[int],
        outcomes: list[PutOutcome],
        forward: bool,
    ) -> list[int]:
        """Route, enqueue and wait for ``indexes_in``; the indexes to route again: their shard
        was closed by a reshard, or (cluster mode) it moved or is being placed or opened."""
        route, starts = stream.route_shards, stream.route_starts
        by_route: defaultdict[int, list[int]] = defaultdict(list)
        if len(route) == 1:
            by_route[0] = indexes_in
        else:  # the route of each record: this loop is the hot path of every put
            from_bytes, bisect_right = int.from_bytes, bisect.bisect_right
            for i in indexes_in:
                by_route[bisect_right(starts, from_bytes(records[i].hash_bytes, "big")) - 1].append(
                    i
                )
        closed: list[int] = []
        waits: list[_Wait] = []
        remote: defaultdict[str, list[int]] = defaultdict(list)  # leader address -> indexes
        for position, indexes in by_route.items():
            shard_id = route[position].shard_id
            pipeline: ShardPipeline | ReplicatedShard | None = stream.pipelines.get(
                shard_id
            ) or self._led_replica(stream, shard_id)
            if pipeline is not None:  # over its write quota: a suffix gets THROTTLED outcomes
                indexes = self.quotas.admit_records(
                    stream.meta, shard_id, records, indexes, outcomes
                )
                if not indexes:
                    continue
            else:
                location = self.locator.locate(stream.meta.name, shard_id)
                if forward and self._peers is not None and isinstance(location, Remote):
                    remote[location.address] += indexes
                    continue
                error = located_error(stream.meta.name, shard_id, location)
                for i in indexes:
                    outcomes[i] = PutOutcome(error=error)
                if isinstance(location, Local) or (
                    isinstance(location, Unavailable) and location.unplaced
                ):  # a reshard's child, being placed or opened here: soon served
                    closed += indexes
                continue
            try:
                write = pipeline.enqueue_records(
                    [records[i].partition_key for i in indexes],
                    [records[i].hash_bytes for i in indexes],
                    [records[i].data for i in indexes],
                )
            except StreamdError as exc:
                for i in indexes:
                    outcomes[i] = PutOutcome(error=exc)
                if isinstance(exc, ShardClosedError):
                    closed += indexes
                continue
            waits.append((pipeline, indexes, write))
        if remote:
            async with trio.open_nursery() as nursery:
                for address, indexes in remote.items():
                    nursery.start_soon(
                        self._forward_puts,
                        address,
                        stream.meta.name,
                        records,
                        indexes,
                        outcomes,
                        closed,
                    )
                await self._wait_puts(waits, outcomes)
        else:
            await self._wait_puts(waits, outcomes)
        return closed

    async def _forward_puts(
        self,
        address: str,
        name: str,
        records: Sequence[RecordIn],
        indexes: list[int],
        outcomes: list[PutOutcome],
        reroute: list[int],
    ) -> None:
        """Forward records to their leader; those it refused because their shard was closed
        or is not its own (a reshard or a move under way there) go to ``reroute``: they were
        not written, so routing them again is safe."""
        assert self._peers is not None
        try:
            answers = await self._peers.put_records(address, name, [records[i] for i in indexes])
        except StreamdError as exc:  # the node could not be asked: every record gets why
            answers = [PutOutcome(error=exc)] * len(indexes)
        for i, answer in zip(indexes, answers, strict=True):
            outcomes[i] = answer
            # STREAM_NOT_FOUND from the leader: its copy of the catalog has not caught up with
            # a stream created a moment ago through another node (this one knows the stream).
            if isinstance(
                answer.error,
                ShardClosedError | NotLeaderError | ShardUnavailableError | StreamNotFoundError,
            ):
                reroute.append(i)

    @staticmethod
    async def _wait_puts(waits: list[_Wait], outcomes: list[PutOutcome]) -> None:
        for pipeline, indexes, write in waits:
            try:
                base, _, _ = await write.wait()
            except StreamdError as exc:
                for i in indexes:
                    outcomes[i] = PutOutcome(error=exc)
                continue
            shard_id, sequence_of = pipeline.shard.shard_id, pipeline.sequence_of
            for n, i in enumerate(indexes):
                outcomes[i] = PutOutcome(shard_id, sequence_of(base + n))

    async def append_batch(self, name: str, shard_id: str, data: bytes) -> AppendOutcome:
        """Validate a client-built batch and commit it (idempotently for producer batches).

        Raises StreamNotFoundError, ShardNotFoundError, InvalidBatchError, WrongShardError,
        ShardClosedError, ThrottledError, OutOfOrderSequenceError, StorageFullError.
        """
        stream = self._stream(name)
        pipeline = self._led_replica(stream, shard_id) or stream.pipeline(shard_id)
        header, records = _validate_batch(data, pipeline.shard, stream.meta.max_record_bytes)
        self.quotas.admit_batch(stream.meta, shard_id, records)  # raises ThrottledError
        write = pipeline.enqueue_batch(data, header)
        base, count, duplicate = await write.wait()
        return AppendOutcome(shard_id, base, pipeline.sequence_of(base), count, duplicate)

    async def read(
        self,
        name: str,
        shard_id: str,
        position: Position,
        max_bytes: int,
        wait_ms: int,
        *,
        forward: bool = True,
        counted: bool = True,
        metered: bool = False,
    ) -> ReadResult:
        """Raises StreamNotFoundError, ShardNotFoundError, InvalidSequenceNumberError,
        CorruptDataError (for a stored batch that fails its CRC; details name its offsets),
        ThrottledError (``metered``: a polling read, GetRecords or the native read, over the
        shard's read quota).

        Cluster mode: a shard another node leads is read there (``forward``, as the Kinesis
        gateway and the group service do), or refused with NOT_LEADER (the native protocol:
        its clients go to the leader themselves). Raises ShardUnavailableError.
        ``counted`` False: a probe (the groups' lag), left out of the read counts and metrics."""
        stream = self._stream(name)
        if shard_id not in stream.pipelines and forward and self._peers is not None:
            location = self.locator.locate(name, shard_id)
            if isinstance(location, Remote) and stream.meta.shard(shard_id) is not None:
                return await self._peers.read(
                    location.address,
                    name,
                    shard_id,
                    position,
                    max_bytes,
                    wait_ms,
                    counted=counted,
                    metered=metered,
                )
        pipeline = self._led_replica(stream, shard_id) or stream.pipeline(shard_id)
        # A whole answer must fit in one frame (frame header and CBOR framing included).
        max_bytes = min(max_bytes, self.config.frame_bytes_max - 64 * 1024)
        if metered:
            self.quotas.admit_read(stream.meta, shard_id)
        result = await pipeline.read(position, max_bytes, wait_ms, counted=counted)
        if metered:
            self.quotas.charge_read(stream.meta, shard_id, result.batches)
        if not result.shard_end:
            return result
        children = self._stream(name).meta.children_of(shard_id)
        return replace(
            result,
            child_shards=tuple(
                ChildShard(
                    c.shard_id,
                    tuple(p for p in (c.parent_shard_id, c.adjacent_parent_shard_id) if p),
                    c.hash_key_start,
                    c.hash_key_end,
                )
                for c in children
            ),
        )


# A write enqueued on a shard this node serves, with the indexes of its records in the put.
_Wait = tuple[ShardPipeline | ReplicatedShard, list[int], PendingWrite | ReplicatedWrite]


class _NoWrite(Exception):
    """A catalog change function's way to say "nothing to write" (not a StreamdError)."""


def _offset_in(shard: ShardMeta, sequence: str) -> int:
    """The offset a sequence number names in ``shard``. Raises InvalidSequenceNumberError."""
    index, offset = parse_sequence(sequence)
    if index != shard.index:
        raise InvalidSequenceNumberError(
            f"sequence number {sequence} belongs to another shard, not {shard.shard_id}"
        )
    return offset


def _without(shard_ids: set[str], meta: StreamMeta) -> StreamMeta:
    return replace(meta, shards=tuple(s for s in meta.shards if s.shard_id not in shard_ids))


def _active(meta: StreamMeta) -> StreamMeta:
    """``meta`` if the stream takes metadata changes. Raises ResourceInUseError."""
    if meta.status != "ACTIVE":
        progress = f" ({meta.reshard})" if meta.reshard else ""
        raise ResourceInUseError(
            f"stream {meta.name!r} is {meta.status}{progress}; try again when it is ACTIVE",
            status=meta.status,
        )
    return meta


def _changed_tags(
    tags: dict[str, str], add: dict[str, str], remove: Sequence[str]
) -> dict[str, str]:
    """The tags after a change. Raises InvalidArgumentError (quota tags too: quotas.py),
    LimitExceededError."""
    for key, value in add.items():
        if not isinstance(key, str) or not 1 <= len(key) <= TAG_KEY_CHARS_MAX:
            raise InvalidArgumentError(f"tag key must be 1..{TAG_KEY_CHARS_MAX} characters")
        if not isinstance(value, str) or len(value) > TAG_VALUE_CHARS_MAX:
            raise InvalidArgumentError(f"tag value must be 0..{TAG_VALUE_CHARS_MAX} characters")
    changed = {k: v for k, v in tags.items() if k not in set(remove)} | dict(add)
    if len(changed) > TAGS_PER_STREAM_MAX:
        raise LimitExceededError(
            f"a stream holds at most {TAGS_PER_STREAM_MAX} tags; this would make {len(changed)}"
        )
    check_quota_tags(changed)
    return changed


def _validate_batch(
    data: bytes, shard: ShardMeta, record_bytes_max: int
) -> tuple[batchfmt.BatchHeader, batchfmt.Records]:
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
    batchfmt.check_records(records, low, high, record_bytes_max)
    return header, records


def _encryption_key_id(stream: _Stream) -> str | None:
    """The key new batches of ``stream`` are sealed with: its metadata's, as this node last
    adopted it (cluster nodes follow the catalog)."""
    return stream.meta.encryption_key_id
