"""The per-shard commit pipeline: queue, group commit, encode, write, then sync and replicate
side by side, ack.

Writers (``enqueue_records`` for server-routed records, ``enqueue_batch`` for client-built
batches) put a ``PendingWrite`` on a bounded queue and wait on it. One appender task per shard
takes everything queued while the previous group was being made durable (group commit), plans it
into batches with consecutive offsets, and hands the plan to the shard's I/O lane, which encodes
server-built batches, rewrites client batch headers and appends them. Then two votes run at once:
the lane syncs the batches (the local vote, per ``--fsync``) while the replication seam
(``Committer.replicate``) ships them; the lane tells the appender the batches are appended before
it syncs, so shipping never waits for the local fsync (a committer that ships nothing,
``Committer.ships`` False, gets the proposal once the local vote is in: one wake-up less).
When ``replicate`` returns, the commit rule holds (the committer decides the quorum;
``LocalCommitter``'s is the local vote alone): the high watermark moves, waiting readers wake,
and every writer in the group is acknowledged at once.
A failed or cancelled vote fails the group; it is never published, and is cut from the log before
the next group. At open, the high watermark is what the committer confirms (``committed_at_open``),
not the log's end.

Readers only ever see offsets below the high watermark (invariant 2). Recent committed batches
stay in a bounded in-memory tail cache so that tailing readers never touch the disk.

Idempotent producers: a client batch carries (producer id, producer sequence). A batch equal to
one of that producer's last committed batches (kept by the log, rebuilt from headers at start)
or to one still in flight is answered with the original offsets instead of being stored again.

Time (arrival stamps) comes from the ``Clock`` the engine hands in, so a test can run the
pipeline on a ``VirtualClock``; the fsync-interval timer is trio's (``trio.testing.MockClock``).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import outcome
import structlog
import trio

from streamd_client import batch as batchfmt
from streamd_client.errors import (
    CorruptDataError,
    DataCorruptError,
    InternalError,
    InvalidArgumentError,
    InvalidSequenceNumberError,
    OutOfOrderSequenceError,
    RequestTimeoutError,
    ShardClosedError,
    ShuttingDownError,
    StorageFullError,
    StreamdError,
    ThrottledError,
)
from streamd_client.model import Position, make_sequence, parse_sequence
from streamd_client.results import ChildShard  # the client's type: one definition of the shape

from . import metrics
from .catalog import ShardMeta
from .clock import Clock, WallClock
from .iothread import IoPool, IoThread
from .monitoring import ShardCounters
from .replication import Committer, Proposal
from .security.keyring import UnknownKeyError
from .storage import OffsetTrimmedError, SyncFailedError, at_rest

if TYPE_CHECKING:
    from .storage import ShardLog
    from .storage.quarantine import Quarantined

log = structlog.get_logger(__name__)

_SERVER_BATCH_PAYLOAD_BYTES_MAX = 4 * 1024 * 1024


def now_ms() -> int:
    """Wall-clock milliseconds, for callers that are handed no Clock."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    fsync: str = "always"  # always | interval | never
    fsync_interval_ms: int = 50
    queue_bytes_max: int = 32 * 1024 * 1024
    queue_requests_max: int = 10_000
    commit_batch_bytes_max: int = 4 * 1024 * 1024
    tail_cache_bytes_max: int = 8 * 1024 * 1024


@dataclass(slots=True, eq=False)
class PendingWrite:
    """One writer's request: either records to batch here, or a whole client batch."""

    record_count: int
    size_bytes: int
    arrival_ms: int
    keys: list[str] | None = None
    hashes: list[bytes] | None = None
    datas: list[bytes] | None = None
    batch: bytes | None = None
    producer: tuple[int, int] | None = None  # (producer id, producer sequence)
    done: trio.Event = field(default_factory=trio.Event)
    base_offset: int = -1
    duplicate: bool = False
    error: StreamdError | None = None

    async def wait(self) -> tuple[int, int, bool]:
        """(base offset, record count, duplicate) once committed; raises the write's error."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.base_offset, self.record_count, self.duplicate


@dataclass(frozen=True, slots=True)
class ReadResult:
    batches: list[bytes]
    start_offset: int
    next_offset: int
    high_watermark: int
    millis_behind: int
    # The shard is closed and this read reached its ending offset: no record will ever follow.
    shard_end: bool = False
    child_shards: tuple[ChildShard, ...] = ()
    # Arrival time of the shard's newest committed record when the read was answered (the one
    # at ``high_watermark - 1``; 0 for an empty shard). A front end that returns fewer records
    # than the read holds (a Kinesis Limit, events split by size) computes its own lag from it.
    tip_arrival_ms: int = 0
    # The read began inside a quarantined range [base, next) and continues after it (the gap).
    skipped: tuple[int, int] | None = None


def millis_behind(tip_arrival_ms: int, last_arrival_ms: int, next_offset: int, hwm: int) -> int:
    """How far, in ms of arrival time, the last record returned (``last_arrival_ms``; the
    read continues at ``next_offset``) is behind the shard's newest one: 0 only at the tip."""
    if next_offset >= hwm:
        return 0
    return max(0, tip_arrival_ms - last_arrival_ms)


@dataclass(frozen=True, slots=True)
class _Cached:
    base_offset: int
    next_offset: int
    last_arrival_ms: int
    data: bytes


# What the lane's job for one group returns (``ShardPipeline._write_plan``).
_LaneResult = tuple[list["_Planned"], StreamdError | None, SyncFailedError | None, int]


@dataclass(slots=True)
class _Planned:
    """One batch to write: either built here from ``writes`` or a client batch (one write)."""

    base_offset: int
    writes: list[PendingWrite]
    data: bytes = b""
    last_arrival_ms: int = 0

    @property
    def next_offset(self) -> int:
        return self.base_offset + sum(w.record_count for w in self.writes)


class _Votes:
    """One group commit's two votes: the local append and sync (this is the ``LocalVote`` the
    committer is handed) and the committer's ``replicate``, run beside it. Only the trio thread
    touches it; the lane reports to it through the trio token."""

    __slots__ = (
        "answered",
        "append_error",
        "appended",
        "crashed",
        "durable_end",
        "local_error",
        "published",
        "replicating",
        "sync_error",
        "synced",
        "written",
    )

    def __init__(self) -> None:
        self.appended = trio.Event()  # ``written`` is on the local log (not yet synced)
        self.synced = trio.Event()  # the lane job is over: the local vote is in
        self.replicating = trio.CancelScope()  # around ``replicate``
        self.written: list[_Planned] = []
        self.append_error: StreamdError | None = None  # for the writes after ``written``
        self.sync_error: SyncFailedError | None = None
        self.local_error: StreamdError | None = None  # the local vote failed with this
        self.crashed: BaseException | None = None  # the lane job raised (a bug)
        self.durable_end = -1
        self.published = False  # ``written`` is below the high watermark
        self.answered = False  # every writer of the group has its answer

    def set_appended(self, written: list[_Planned], error: StreamdError | None) -> None:
        if not self.appended.is_set():
            self.written, self.append_error = written, error
            self.appended.set()

    def local_done(self, result: outcome.Outcome[_LaneResult]) -> None:
        """The lane job's outcome. A failed sync is a failed vote: ``replicate`` is cancelled
        (unless the group is already published, which ``_judge`` settles)."""
        try:
            written, error, sync_error, durable_end = result.unwrap()
        except BaseException as exc:  # handed to the waiting task, which raises it
            self.crashed, self.local_error = exc, InternalError(f"write failed: {exc!r}")
            written, error, sync_error, durable_end = [], None, None, -1
        if sync_error is not None:
            self.sync_error = sync_error
            self.local_error = self.local_error or InternalError(f"fsync failed: {sync_error}")
            written = []
        self.durable_end = durable_end
        self.set_appended(written, error)  # a no-op if the lane reported before its sync
        if self.local_error is not None and not self.published:
            self.replicating.cancel()
        self.synced.set()

    async def durable(self) -> int:
        if not self.synced.is_set():  # (once set, no extra scheduling round on the hot path)
            await self.synced.wait()  # bounded by the lane's job, which cannot be abandoned
        if self.local_error is not None:
            raise self.local_error
        return self.durable_end


def _no_key() -> str | None:
    return None


class ShardPipeline:
    def __init__(
        self,
        stream: str,
        shard: ShardMeta,
        shard_log: ShardLog,
        config: PipelineConfig,
        committer: Committer,
        *,
        io_pool: IoPool | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``io_pool``: the node's I/O threads (None: a thread of this shard's own). ``clock``:
        arrival times (default the wall clock). The high watermark is set when ``run`` opens."""
        self.stream = stream
        self.shard = shard
        self.log = shard_log
        self.config = config
        self.committer = committer
        self.clock: Clock = clock or WallClock()
        # Nothing is known committed until the committer says so (``_open``).
        self.high_watermark = shard_log.start_offset  # Invariant: start_offset <= hwm <= next
        self.last_arrival_ms = shard_log.last_arrival_ms
        self._queue: deque[PendingWrite] = deque()
        self._queued_bytes = 0
        self._work = trio.Event()
        self._committed = trio.Event()
        self._in_flight: dict[int, dict[int, PendingWrite]] = {}
        self._tail: list[_Cached] = []
        self._tail_bytes = 0
        self._closing = False
        self._sealed = False  # resharding: refuse new writes while the parent is switched
        # Set after an fsync failure that cannot be undone here (a device error, or records
        # already acknowledged in fsync=interval mode): the kernel may have dropped the dirty
        # pages and a later fsync could report success for data that is gone, so the shard
        # takes no more writes until a restart recovers its log from what is really on disk.
        self._fenced: InternalError | None = None
        # Set after an fsync failed for lack of space in fsync=always mode: only batches past
        # the high watermark (never acknowledged, never served) are in doubt. The next group
        # commit first cuts them (``ShardLog.truncate_to``) and reopens the log; until that
        # succeeds, writes get STORAGE_FULL. docs/operations.md ("Full disk") says why.
        self._unsynced: SyncFailedError | None = None
        # Set when the commit step (the replication seam) failed after the group was appended:
        # those batches are on the local disk but not committed ("appended locally" is never
        # "committed"), so a later group must not publish them. The next group commit cuts
        # them first, as after a full disk.
        self._uncommitted: StreamdError | None = None
        self._busy = False  # a group is being committed
        self._progress = trio.Event()  # set after every group commit, then replaced
        self._disk_reads = 0  # reads in a worker thread now (close_log waits for them)
        self._reads_done = trio.Event()
        self._stopped = trio.Event()
        self._retention_cutoff_ms: int | None = None
        self._dirty = False
        self._log = log.bind(stream=stream, shard_id=shard.shard_id)
        self._records_appended = metrics.RECORDS_APPENDED.labels(stream)
        self._bytes_appended = metrics.BYTES_APPENDED.labels(stream)
        self._group_commits = metrics.GROUP_COMMITS.labels(stream)
        self.counters = ShardCounters()  # enhanced monitoring (monitoring.py) reads these
        self._records_read = metrics.RECORDS_READ.labels(stream)
        self._bytes_read = metrics.BYTES_READ.labels(stream)
        self._io = IoThread(f"streamd-{stream}-{shard.shard_id}", pool=io_pool)
        self._token = trio.lowlevel.current_trio_token()  # the lane reports "appended" with it
        # Encryption at rest (storage/at_rest.py): the node's keyring, and the key new batches
        # are sealed with, asked per batch (None: stored as plaintext). The engine points it at
        # the stream's metadata; batches already stored keep the key they name.
        self.keys: at_rest.KeySource | None = None
        self.key_id_of: Callable[[], str | None] = _no_key

    # -- writers ------------------------------------------------------------------------------

    def enqueue_records(
        self, keys: list[str], hashes: list[bytes], datas: list[bytes]
    ) -> PendingWrite:
        """Queue validated records. Raises ThrottledError, ShardClosedError, ShuttingDownError."""
        size = sum(map(len, datas)) + sum(map(len, keys)) + 24 * len(keys)
        write = PendingWrite(
            len(keys), size, self.clock.now_ms(), keys=keys, hashes=hashes, datas=datas
        )
        self._admit(write)
        return write

    def enqueue_batch(self, data: bytes, header: batchfmt.BatchHeader) -> PendingWrite:
        """Queue a validated client batch, or return the pending/committed original of a retry.

        Raises OutOfOrderSequenceError, ThrottledError, ShardClosedError, ShuttingDownError.
        """
        write = PendingWrite(header.record_count, len(data), self.clock.now_ms(), batch=data)
        if header.producer_id:
            original = self._check_producer(header.producer_id, header.producer_seq, write)
            if original is not None:
                return original
            write.producer = (header.producer_id, header.producer_seq)
        self._admit(write)
        if write.producer:
            self._in_flight.setdefault(write.producer[0], {})[write.producer[1]] = write
        return write

    def _admit(self, write: PendingWrite) -> None:
        if self._closing:
            raise ShuttingDownError("shard is closing")
        if self._fenced is not None:
            raise InternalError(self._fenced.message)  # a fresh one: no growing traceback
        if self._sealed or not self.shard.is_open:
            raise ShardClosedError(
                f"shard {self.shard.shard_id} is closed", shard_id=self.shard.shard_id
            )
        if (
            len(self._queue) >= self.config.queue_requests_max
            or self._queued_bytes + write.size_bytes > self.config.queue_bytes_max
        ):
            metrics.WRITES_REJECTED.labels(ThrottledError.code).inc()
            self.counters.write_throttled += write.record_count
            raise ThrottledError(
                f"shard {self.shard.shard_id} write queue is full", shard_id=self.shard.shard_id
            )
        self._queue.append(write)
        self._queued_bytes += write.size_bytes
        self._work.set()

    def _check_producer(
        self, producer_id: int, seq: int, write: PendingWrite
    ) -> PendingWrite | None:
        # Only batches below the high watermark are committed: one past it was appended but its
        # commit failed (or its fsync did), and it is cut before the next group is written.
        hwm = self.high_watermark
        stored = [e for e in self.log.producers.get(producer_id, ()) if e[1] + e[2] <= hwm]
        for committed_seq, base, count in stored:
            if committed_seq == seq:
                write.base_offset, write.duplicate = base, True
                write.record_count = count
                write.done.set()
                return write
        in_flight = self._in_flight.get(producer_id, {})
        if seq in in_flight:
            return in_flight[seq]
        known = [s for s, _, _ in stored] + list(in_flight)
        if known and seq != max(known) + 1:
            raise OutOfOrderSequenceError(
                f"producer {producer_id} sent sequence {seq}; expected {max(known) + 1}",
                expected=max(known) + 1,
            )
        return None

    # -- the appender ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open (the high watermark from the committer), report started, then the appender loop.
        Returns after ``close`` once the queue is drained. Raises what ``committed_at_open``
        raises, before it reports started."""
        try:
            await self._open()
            task_status.started()
            while True:
                if not self._queue:
                    if self._closing:
                        break
                    await self._idle()
                    continue
                self._busy = True
                try:
                    await self._commit_group(self._take_group())
                finally:
                    self._busy = False
                    self._progress.set()
                    self._progress = trio.Event()
        finally:
            self._io.stop()
            self._stopped.set()

    async def _open(self) -> None:
        """Start the high watermark where the committer says the quorum has committed. What
        the local log holds past it was appended, never confirmed: it is not served, and the
        next group commit cuts it first (as after a failed commit step)."""
        log_end, start = self.log.next_offset, self.log.start_offset
        committed = await self.committer.committed_at_open(
            self.shard.shard_id, self.shard.leader_epoch, log_end
        )
        if not start <= committed <= log_end:  # the committer confirms what this log lacks
            self._fenced = InternalError(
                f"shard {self.shard.shard_id} refuses writes: its committer confirms offsets "
                f"up to {committed}, its log holds [{start}, {log_end}); restart the server"
            )
            self._log.error("shard.open_failed", committed=committed, log_end=log_end)
            return
        self.high_watermark = committed
        if committed < log_end:
            self._uncommitted = InternalError(f"offsets [{committed}, {log_end}) not committed")
            self.last_arrival_ms = await self._io.run(self._arrival_at, committed)
            self._log.warning("shard.opened_uncommitted", committed=committed, log_end=log_end)

    def _arrival_at(self, end: int) -> int:
        """Lane: the last arrival time of the batch ending at ``end`` (0 if none or unreadable)."""
        if end <= self.log.start_offset:
            return 0
        try:
            batches = self.log.read(end - 1, 1, end)
        except (StreamdError, OffsetTrimmedError, OSError):
            return 0
        return batchfmt.parse_header(batches[-1]).last_arrival_ms if batches else 0

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking writes, drain the queue, and wait for the appender to finish."""
        self._closing = True
        self._work.set()
        with trio.move_on_after(timeout_s):
            await self._stopped.wait()

    # -- resharding ---------------------------------------------------------------------------

    async def seal(self, timeout_s: float) -> int:
        """Refuse new writes (SHARD_CLOSED), commit everything already queued, make it durable
        whatever the fsync mode, and return the ending offset: every acknowledged write of this
        shard lies below it, every later one goes to a child. ``unseal`` undoes it.

        Raises RequestTimeoutError (the queue did not drain in time), InternalError (the shard
        is fenced, or the sync failed, which fences it), StorageFullError (an fsync failed for
        lack of space and the shard has not recovered yet); the shard stays sealed either way,
        so the caller must unseal.
        """
        assert self.shard.is_open
        self._sealed = True
        if self._fenced is not None:
            raise InternalError(self._fenced.message)
        if self._unsynced is not None:
            raise StorageFullError(f"shard {self.shard.shard_id} is recovering from a full disk")
        try:
            with trio.fail_after(timeout_s):
                while self._queue or self._busy:
                    await self._progress.wait()
        except trio.TooSlowError:
            raise RequestTimeoutError(
                f"shard {self.shard.shard_id}'s queue did not drain in {timeout_s} s"
            ) from None
        try:
            await self._io.run(self.log.sync)
        except SyncFailedError as exc:
            raise self._sync_failed(exc) from exc
        if self._fenced is not None:  # a commit failed its fsync while we waited
            raise InternalError(self._fenced.message)
        if self._unsynced is not None:
            raise StorageFullError(f"shard {self.shard.shard_id} is recovering from a full disk")
        if self._uncommitted is not None:  # the last commit failed: cut what it appended
            failure = await self._io.run(self._recover_unsynced)
            if failure is not None:
                raise failure
        assert self.high_watermark == self.log.next_offset
        return self.high_watermark

    def _sync_failed(self, exc: SyncFailedError) -> StreamdError:
        """Decide what a failed fsync means (the decision table in docs/operations.md).

        ENOSPC/EDQUOT in fsync=always mode: every batch past the high watermark is in doubt but
        was never acknowledged nor served, so cutting it loses nothing promised; the shard
        recovers by itself (``_recover_unsynced``) once space is back. Anything else (EIO, or
        fsync=interval, where acknowledged records may be gone): fenced until a restart.
        Returns the error to answer the writers with. Trio thread.
        """
        if exc.full_disk and self.config.fsync == "always":
            self._unsynced = exc
            self._log.error("shard.fsync_failed", error=exc.message, recoverable=True)
            return StorageFullError(
                f"shard {self.shard.shard_id}: {exc.message}; records past the last "
                "acknowledged one are discarded and the shard goes on once space is freed"
            )
        self._fence(exc)
        assert self._fenced is not None
        return InternalError(self._fenced.message)

    def _fence(self, exc: OSError | SyncFailedError) -> None:
        self._log.error("shard.fsync_failed", error=str(exc), recoverable=False)
        self._fenced = InternalError(
            f"shard {self.shard.shard_id} refuses writes after an fsync failure ({exc}); "
            "restart the server to recover it"
        )

    def _recover_unsynced(self) -> StreamdError | None:
        """Appender's thread, after a recoverable fsync failure or a failed commit step: cut
        the log back to the high watermark, reopen it from the files (the producer table with
        it, so a retry of a cut batch is stored again, not answered from it), and go on. None
        on success, else the error that the writers waiting now get (the next group commit
        tries again)."""
        hwm = self.high_watermark
        try:
            if not self.log.closed:
                self.log.truncate_to(hwm)
            fresh = type(self.log).open(self.log.directory, self.log.config, verify_all=False)
        except (OSError, SyncFailedError, StreamdError) as exc:
            return StorageFullError(
                f"shard {self.shard.shard_id} cannot recover from a failed fsync yet: {exc}"
            )
        if fresh.next_offset != hwm:  # acknowledged records missing: never go on silently
            fresh.close(clean=False)
            self._fence(OSError(f"log holds {fresh.next_offset} records after the cut, not {hwm}"))
            assert self._fenced is not None
            return InternalError(self._fenced.message)
        event = "shard.fsync_recovered" if self._unsynced is not None else "shard.uncommitted_cut"
        self.log, self._unsynced, self._uncommitted = fresh, None, None
        self._log.warning(event, next_offset=hwm)
        return None

    def unseal(self) -> None:
        self._sealed = False

    def close_shard(self, closed: ShardMeta) -> None:
        """Adopt the closed metadata (same shard, ending offset set); long-polls return."""
        assert closed.shard_id == self.shard.shard_id and not closed.is_open
        assert closed.ending_offset == self.high_watermark
        self.shard = closed
        self._sealed = False
        self._committed.set()
        self._committed = trio.Event()

    def request_retention(self, cutoff_ms: int) -> None:
        self._retention_cutoff_ms = cutoff_ms
        self._work.set()

    async def _idle(self) -> None:
        """Wait for work; meanwhile run due background chores (interval fsync, retention)."""
        if self._retention_cutoff_ms is not None:
            cutoff, self._retention_cutoff_ms = self._retention_cutoff_ms, None
            try:
                deleted = await self._io.run(self.log.delete_segments_before, cutoff)
            except SyncFailedError as exc:  # rolling the active segment synced it
                self._sync_failed(exc)
                return
            except OSError as exc:  # the next round tries again
                self._log.warning("shard.retention_failed", error=str(exc))
                return
            if deleted:
                self._log.info(
                    "shard.retention", segments_deleted=deleted, start_offset=self.log.start_offset
                )
            return
        timeout_s = self.config.fsync_interval_ms / 1000 if self._dirty else 3600.0
        with trio.move_on_after(timeout_s) as scope:
            await self._work.wait()
        self._work = trio.Event()
        if scope.cancelled_caught and self._dirty:
            self._dirty = False
            try:
                await self._io.run(self.log.sync)
            except SyncFailedError as exc:  # acknowledged records may be lost: fenced
                self._sync_failed(exc)

    def _take_group(self) -> list[PendingWrite]:
        group: list[PendingWrite] = []
        size = 0
        while self._queue and (
            not group or size + self._queue[0].size_bytes <= self.config.commit_batch_bytes_max
        ):
            write = self._queue.popleft()
            size += write.size_bytes
            group.append(write)
        self._queued_bytes -= size
        return group

    def _plan(self, group: list[PendingWrite]) -> list[_Planned]:
        """Consecutive record writes share one batch (bounded); client batches stand alone."""
        plan: list[_Planned] = []
        offset = self.log.next_offset
        current: _Planned | None = None
        current_records = current_bytes = 0
        for write in group:
            fits = (
                current is not None
                and current_records + write.record_count <= batchfmt.BATCH_RECORDS_MAX
                and current_bytes + write.size_bytes <= _SERVER_BATCH_PAYLOAD_BYTES_MAX
            )
            if write.batch is not None or not fits:
                if current is not None:
                    offset = current.next_offset
                current = _Planned(offset, [write])
                plan.append(current)
                current_records, current_bytes = write.record_count, write.size_bytes
                if write.batch is not None:
                    offset, current = current.next_offset, None
            else:
                assert current is not None
                current.writes.append(write)
                current_records += write.record_count
                current_bytes += write.size_bytes
        return plan

    async def _commit_group(self, group: list[PendingWrite]) -> None:
        if self._unsynced is not None or self._uncommitted is not None:
            failure = await self._io.run(self._recover_unsynced)
            if failure is not None:
                metrics.WRITES_REJECTED.labels(failure.code).inc()
                self._finish(group, set(), failure)
                return
        plan = self._plan(group)
        stamp_ms = max(self.clock.now_ms(), self.last_arrival_ms)
        votes = _Votes()
        started = time.perf_counter()
        try:
            error = await self._vote(group, plan, stamp_ms, votes)
        except BaseException:  # cancelled from outside (the server stops): answer everyone
            if votes.written and not votes.published:
                self._uncommitted = ShuttingDownError("the commit was cancelled")
            if not votes.answered:
                self._answer(group, votes, ShuttingDownError("shard stopped while committing"))
            raise
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        if not votes.answered:
            self._answer(group, votes, error)
        if self._fenced is not None and self._queue:  # what is queued must not reach the log
            queued = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._finish(queued, set(), None)

    def _answer(self, group: list[PendingWrite], votes: _Votes, error: StreamdError | None) -> None:
        """Give the published writes their offsets; answer every writer of ``group``."""
        written = votes.written if votes.published else []
        for planned in written:
            offset = planned.base_offset
            for write in planned.writes:
                write.base_offset = offset
                offset += write.record_count
        votes.answered = True
        self._finish(group, {id(w) for p in written for w in p.writes}, error)

    async def _vote(
        self, group: list[PendingWrite], plan: list[_Planned], stamp_ms: int, votes: _Votes
    ) -> StreamdError | None:
        """The local vote (append, then sync, one lane job) and, as soon as the batches are
        appended, the committer's ``replicate`` beside the sync. When ``replicate`` returns
        with no failed vote, the group is published and its writers answered at once (a quorum
        may not need the local vote). Returns the error for the writers not answered yet. The
        lane job's outcome arrives by callback (no task per group); this waits for it whatever
        happens, so no job outlives its group."""
        commit_error: StreamdError | None = None
        self._io.submit(self._write_plan, plan, stamp_ms, votes, done=votes.local_done)
        try:
            await votes.appended.wait()
            written = votes.written
            if written and votes.local_error is None:
                proposal = Proposal(
                    self.shard.shard_id,
                    self.shard.leader_epoch,
                    tuple(p.data for p in written),
                    written[0].base_offset,
                    written[-1].next_offset,
                    votes,
                )
                try:
                    with votes.replicating:  # cancelled if the local vote fails meanwhile
                        await self.committer.replicate(proposal)
                except StreamdError as exc:
                    commit_error = exc
                else:  # the local vote may have failed after replicate's last checkpoint
                    if votes.local_error is None and not votes.replicating.cancelled_caught:
                        self._publish(written)
                        votes.published = True
                        self._answer(group, votes, votes.append_error)
        finally:
            if not votes.synced.is_set():
                with trio.CancelScope(shield=True):
                    await votes.synced.wait()
            if votes.sync_error is not None:
                votes.local_error = self._local_sync_failed(votes)
        return self._judge(votes, commit_error)

    def _local_sync_failed(self, votes: _Votes) -> StreamdError:
        assert votes.sync_error is not None
        if votes.published:  # committed by a quorum without this replica: never cut it
            self._fence(votes.sync_error)
            assert self._fenced is not None
            return InternalError(self._fenced.message)
        return self._sync_failed(votes.sync_error)

    def _judge(self, votes: _Votes, commit_error: StreamdError | None) -> StreamdError | None:
        """After both votes: log, and name the error of the writers not committed."""
        if votes.crashed is not None:  # the lane job raised: a bug, not a vote
            raise votes.crashed
        if votes.append_error is not None:
            metrics.WRITES_REJECTED.labels(votes.append_error.code).inc()
            self._log.warning(
                "shard.write_failed",
                code=votes.append_error.code,
                error=votes.append_error.message,
            )
        if votes.published:
            return votes.append_error
        if votes.written and votes.local_error is None:  # appended, synced, not committed
            assert commit_error is not None
            self._uncommitted = commit_error
            self._log.warning(
                "shard.commit_failed", code=commit_error.code, error=commit_error.message
            )
        return votes.local_error or commit_error or votes.append_error

    def _finish(
        self, group: list[PendingWrite], committed: set[int], error: StreamdError | None
    ) -> None:
        """Answer every writer of ``group``: committed ones by id, the others with ``error``."""
        for write in group:
            if id(write) not in committed:
                write.error = error or InternalError(
                    self._fenced.message if self._fenced else "write was not committed"
                )
            if write.producer is not None:
                self._forget_in_flight(*write.producer)
            write.done.set()

    def _forget_in_flight(self, producer_id: int, seq: int) -> None:
        batches = self._in_flight.get(producer_id)
        if batches is not None:
            batches.pop(seq, None)
            if not batches:
                del self._in_flight[producer_id]

    def _write_plan(self, plan: list[_Planned], stamp_ms: int, votes: _Votes) -> _LaneResult:
        """Lane: encode and append; report the batches appended (so they ship while this
        thread syncs); then fsync per the mode. Returns what was written, the error of the
        first write that was not, the sync failure if any (nothing then counts written), and
        the log's end, durable per the mode."""
        written: list[_Planned] = []
        error: StreamdError | None = None
        for planned in plan:
            try:
                planned.data = self._encode(planned, stamp_ms)
            except LookupError as exc:  # the keyring lost the stream's key (a reload)
                error = InternalError(f"cannot encrypt: {exc}")
                break
            planned.last_arrival_ms = stamp_ms
            try:
                self.log.append(planned.data)
            except StorageFullError as exc:
                error = exc
                break
            except SyncFailedError as exc:  # rolling synced the sealed segment
                return [], None, exc, -1
            except OSError as exc:
                error = InternalError(f"write failed: {exc}")
                break
            written.append(planned)
        if written:
            if self.config.fsync == "always":
                if self.committer.ships:  # ship while this thread syncs
                    self._token.run_sync_soon(votes.set_appended, written, error)
                try:
                    self.log.sync()
                except SyncFailedError as exc:  # never retried as if nothing happened
                    return [], None, exc, -1
            elif self.config.fsync == "interval":
                self._dirty = True
        return written, error, None, self.log.next_offset

    def _encode(self, planned: _Planned, stamp_ms: int) -> bytes:
        """The stored batch: sealed here when the stream is encrypted, so the log, the tail
        cache and what ships to replicas all hold ciphertext. Raises UnknownKeyError (also when
        this node has no keyring: an encrypted stream never gets a batch in plaintext)."""
        data = self._encode_plain(planned, stamp_ms)
        key_id = self.key_id_of()
        if key_id is None:
            return data
        if self.keys is None:
            raise UnknownKeyError(f"the stream is encrypted with {key_id!r}; no --keyring here")
        return at_rest.seal(data, self.keys, key_id)

    def _encode_plain(self, planned: _Planned, stamp_ms: int) -> bytes:
        first_ms = min(stamp_ms, *(w.arrival_ms for w in planned.writes))
        head = planned.writes[0]
        if head.batch is not None:
            return batchfmt.restamp(
                head.batch,
                base_offset=planned.base_offset,
                leader_epoch=self.shard.leader_epoch,
                first_arrival_ms=first_ms,
                last_arrival_ms=stamp_ms,
            )
        keys: list[str] = []
        hashes: list[bytes] = []
        datas: list[bytes] = []
        for write in planned.writes:
            assert write.keys is not None and write.hashes is not None and write.datas is not None
            keys += write.keys
            hashes += write.hashes
            datas += write.datas
        return batchfmt.encode_batch(
            keys,
            hashes,
            datas,
            base_offset=planned.base_offset,
            leader_epoch=self.shard.leader_epoch,
            first_arrival_ms=first_ms,
            last_arrival_ms=stamp_ms,
        )

    def _publish(self, written: list[_Planned]) -> None:
        end = written[-1].next_offset
        assert end > self.high_watermark and end == self.log.next_offset
        self._records_appended.inc(end - self.high_watermark)
        self._bytes_appended.inc(sum(len(p.data) for p in written))
        self.counters.incoming_records += end - self.high_watermark
        self.counters.incoming_bytes += sum(w.size_bytes for p in written for w in p.writes)
        self._group_commits.inc()
        for planned in written:
            self._tail.append(
                _Cached(
                    planned.base_offset, planned.next_offset, planned.last_arrival_ms, planned.data
                )
            )
            self._tail_bytes += len(planned.data)
        while self._tail_bytes > self.config.tail_cache_bytes_max and len(self._tail) > 1:
            self._tail_bytes -= len(self._tail.pop(0).data)
        self.high_watermark = end
        self.last_arrival_ms = written[-1].last_arrival_ms
        self._committed.set()
        self._committed = trio.Event()

    # -- readers --------------------------------------------------------------------------------

    def resolve(self, position: Position) -> int:
        """The offset a position names. Raises InvalidSequenceNumberError."""
        kind = position.kind
        if kind == "trim_horizon":
            return self.log.start_offset
        if kind == "latest":
            return self.high_watermark
        if kind == "at_timestamp":
            assert position.timestamp_ms is not None
            return min(self.log.offset_for_timestamp(position.timestamp_ms), self.high_watermark)
        if kind == "at_offset":
            assert position.offset is not None
            offset = position.offset
        else:
            index, offset = parse_sequence(position.sequence)
            if index != self.shard.index:
                raise InvalidSequenceNumberError(
                    f"sequence number belongs to another shard, not {self.shard.shard_id}"
                )
            offset += kind == "after_sequence"
        if offset > self.high_watermark:
            raise InvalidSequenceNumberError(
                f"position {offset} lies beyond the shard's tip {self.high_watermark}",
                high_watermark=self.high_watermark,
            )
        return offset

    async def read(
        self, position: Position, max_bytes: int, wait_ms: int, *, counted: bool = True
    ) -> ReadResult:
        """Committed batches from ``position``. Raises InvalidSequenceNumberError,
        ShuttingDownError, DataCorruptError (a damaged stored range: details name it).
        ``counted`` False: a probe, left out of the read counts (``counters``) and metrics."""
        offset = max(self.resolve(position), self.log.start_offset)
        skipped = self.log.quarantined_at(offset)
        if skipped is not None:  # moved aside by an operator: go on after it, and say so
            offset = skipped[1]
        if offset >= self.high_watermark and wait_ms > 0:
            with trio.move_on_after(wait_ms / 1000):
                while offset >= self.high_watermark and not self._closing and self.shard.is_open:
                    await self._committed.wait()
        hwm, tip_ms = self.high_watermark, self.last_arrival_ms  # moved together by _publish
        batches, last_ms, next_offset = self._read_tail(offset, max_bytes, hwm)
        if batches:
            batches = self._open_sealed(offset, batches)
        if batches is None:
            try:
                data = await self._read_disk(offset, max_bytes, hwm)
            except OffsetTrimmedError:  # retention ran meanwhile: go on from the new horizon
                offset = self.log.start_offset
                data = await self._read_disk(offset, max_bytes, hwm)
            batches, last_ms, next_offset = data, 0, offset
            for raw in data:
                header = batchfmt.parse_header(raw)
                next_offset, last_ms = header.next_offset, header.last_arrival_ms
        behind = millis_behind(tip_ms, last_ms, next_offset, hwm)
        next_offset = max(next_offset, offset)
        if counted:  # a lag probe reads nobody's records
            self._count_read(batches, next_offset - offset, last_ms)
        ending = self.shard.ending_offset
        shard_end = ending is not None and next_offset >= ending
        return ReadResult(
            batches,
            offset,
            next_offset,
            hwm,
            behind,
            shard_end,
            tip_arrival_ms=tip_ms,
            skipped=skipped,
        )

    def _count_read(self, batches: list[bytes], records: int, last_ms: int) -> None:
        counters = self.counters
        size = sum(map(len, batches))
        counters.outgoing_records += records
        counters.outgoing_bytes += size
        if records > 0:
            self._records_read.inc(records)
            self._bytes_read.inc(size)
        if records > 0 and last_ms > 0:
            counters.iterator_age_ms = max(0, self.clock.now_ms() - last_ms)

    def _read_tail(
        self, offset: int, max_bytes: int, hwm: int
    ) -> tuple[list[bytes] | None, int, int]:
        """Serve from the tail cache if it holds ``offset``; (None, ...) if the disk must."""
        tail = self._tail
        if offset >= hwm:
            return [], 0, offset
        if not tail or offset < tail[0].base_offset:
            return None, 0, offset
        i = bisect.bisect_right(tail, offset, key=lambda c: c.base_offset) - 1
        out: list[bytes] = []
        size = 0
        last_ms, next_offset = 0, offset
        for cached in tail[i:]:
            if cached.base_offset >= hwm or (out and size + len(cached.data) > max_bytes):
                break
            out.append(cached.data)
            size += len(cached.data)
            last_ms, next_offset = cached.last_arrival_ms, cached.next_offset
        return out, last_ms, next_offset

    async def _read_disk(self, offset: int, max_bytes: int, hwm: int) -> list[bytes]:
        """Read from the log in a worker thread; counted, so ``close_log`` waits for it."""
        if self._closing:
            raise ShuttingDownError(f"shard {self.shard.shard_id} is closing")
        self._disk_reads += 1
        try:
            return await trio.to_thread.run_sync(self._read_plain, offset, max_bytes, hwm)
        except CorruptDataError as exc:
            raise self._damaged(offset, exc) from None
        finally:
            self._disk_reads -= 1
            if not self._disk_reads:
                self._reads_done.set()
                self._reads_done = trio.Event()

    def _read_plain(self, offset: int, max_bytes: int, hwm: int) -> list[bytes]:
        """Worker thread: stored batches, sealed ones opened (readers never see ciphertext)."""
        batches = self.log.read(offset, max_bytes, hwm)
        return batches if self.keys is None else at_rest.unseal_all(batches, self.keys)

    def _open_sealed(self, offset: int, batches: list[bytes]) -> list[bytes]:
        if self.keys is None:
            return batches
        try:
            return at_rest.unseal_all(batches, self.keys)
        except CorruptDataError as exc:
            raise self._damaged(offset, exc) from None

    def _damaged(self, offset: int, exc: CorruptDataError) -> DataCorruptError:
        base = exc.details.get("base_offset", offset)
        end = max(exc.details.get("next_offset", offset + 1), base + 1)
        first, last = self.sequence_of(base), self.sequence_of(end - 1)
        metrics.CORRUPT_READS.labels(self.stream).inc()
        return DataCorruptError(
            f"stream {self.stream!r} shard {self.shard.shard_id}: records {first} to {last} "
            f"(offsets [{base}, {end})) are damaged on disk ({exc.message}); records before "
            f"and after are intact. To read past them: streamd admin quarantine-range "
            f"{self.stream} {self.shard.shard_id} --from {first} --to {last}",
            stream=self.stream,
            shard_id=self.shard.shard_id,
            base_offset=base,
            next_offset=end,
            from_sequence=first,
            to_sequence=last,
        )

    async def quarantine(self, base: int, end: int) -> Quarantined:
        """Move the damaged offsets [base, end) aside (``ShardLog.quarantine``); reads skip
        them from now on. Raises InvalidArgumentError (beyond the high watermark, or not a
        wholly damaged range), ShuttingDownError, StorageFullError."""
        if self._closing:
            raise ShuttingDownError(f"shard {self.shard.shard_id} is closing")
        if end > self.high_watermark:
            raise InvalidArgumentError(
                f"offsets [{base}, {end}) reach past the shard's tip {self.high_watermark}"
            )
        try:
            entry = await self._io.run(self.log.quarantine, base, end, self.clock.now_ms())
        except OSError as exc:
            raise InternalError(f"quarantine failed: {exc}") from exc
        # The tail cache holds in-memory copies that may span the range: serve from after it.
        while self._tail and self._tail[0].base_offset < end:
            self._tail_bytes -= len(self._tail.pop(0).data)
        return entry

    async def close_log(self, timeout_s: float = 5.0) -> None:
        """After ``close``: let disk reads in flight finish (bounded), then close the log."""
        with trio.move_on_after(timeout_s):
            while self._disk_reads:
                await self._reads_done.wait()
        await trio.to_thread.run_sync(partial(self.log.close, clean=True))

    def sequence_of(self, offset: int) -> str:
        return make_sequence(self.shard.index, offset)
