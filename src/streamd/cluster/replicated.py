"""A shard replicated on several nodes: the replication core's driver behind the data path.

Every node named in a shard's ``shards/`` document (its ``replicas``) runs one
``ReplicatedShard`` for it: a ``ReplicaDriver`` (replication/driver.py) over a ``FileLogStore``
in ``<shard dir>/replica/log`` with its meta file in ``<shard dir>/replica``. The engine routes
puts and reads to the one the document names leader (a ``Local`` location); the others follow
it through the core's messages, which the transport carries (replication/transport.py).

**Leading.** When the document names this node leader at term T (its ``leader_epoch``), the
node asks its replica to lead core epoch ``lead_epoch(T, persisted)``: ``T << 10``, or one more
than the epoch its replica persisted if that already lies in T's range (this node led T before
a restart). Core epochs must never be reused by two leaders, or by one leader across a restart
(a restarted leader may have lost unsynced batches of its epoch, and would write other batches
at those offsets under the same epoch). Ranges of different terms are disjoint and only the
node the controller named leads in T's, each time under a fresh persisted epoch: unique without
asking the controller again. After 1,023 restarts within one term the node declines (logged);
the next term gives it a new range.

**Writes.** A put's records become one batch in the storage format (docs/storage-format.md),
zstd-compressed as the pipeline's, with offset and epoch 0 and the arrival time in its header;
a producer's client-built batch is kept as it is (its producer id and sequence go into the
``StoredBatch`` so the core's producer table answers retries). The whole encoded batch is the
``StoredBatch`` payload, so nodes carry and store batches as they are, never re-encoded. The
core stamps offset and epoch in the ``StoredBatch``; a read puts them into the payload's header
(``batchfmt.restamp``), so clients get ordinary batches with real sequence numbers.

**Reads** are the leader's, below its high watermark; the epoch-start control batch each
leader writes takes one offset and is never returned (sequence numbers have a gap there, which
Kinesis allows).

**Resharding** seals a parent on its leader (``seal``: no new writes, the writes under way
answered, then a control batch committed in the leader's epoch, which only a leader of a
majority can do) and closes it at the offset after that batch. A replica that starts leading
while its stream's reshard is under way refuses writes until that reshard ends: its predecessor
may have been sealed by a step whose switch is still coming.

**Encryption at rest**: the leader seals the batch it makes before it becomes the
``StoredBatch`` (storage/at_rest.py; the header fields a read restamps are not in its
associated data), so replicas store and ship ciphertext; ``read`` opens sealed batches.

Not yet on replicated shards: retention (the log keeps everything), AT_TIMESTAMP by index (it
scans from the start), quarantine, and a tail cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from streamd_client import batch as batchfmt
from streamd_client.errors import (
    InternalError,
    InvalidSequenceNumberError,
    RequestTimeoutError,
    ShardClosedError,
    ShardUnavailableError,
    StreamdError,
)
from streamd_client.model import Position, make_sequence, parse_sequence

from .. import layout, metrics
from ..catalog import ShardMeta
from ..clock import Clock
from ..meta.errors import MetaError
from ..meta.keys import DeclineReport, JoinReport, ShardAssignment
from ..monitoring import ShardCounters
from ..replication.driver import DriverConfig, Outbox, ReplicaDriver
from ..replication.metafile import MetaFile
from ..replication.replica import ReplicaConfig
from ..replication.transport import ReplicaHost, replica_id_of
from ..shard import ReadResult, millis_behind
from ..storage import at_rest
from ..storage.config import LogConfig
from ..storage.filestore import FileLogStore
from ..storage.logstore import StoredBatch, make_batch

log = structlog.get_logger(__name__)

EPOCH_TERM_SHIFT = 10  # core epochs per controller term: 1,024 (one per restart of its leader)
READ_BATCHES_MAX = 256
SERVING_WAIT_S = 2.0  # a write or read on a leader still fencing waits this long for it
# Batches looked at per step of an AT_TIMESTAMP scan (from the start of the log).
TIMESTAMP_SCAN_BATCHES = 256
JOIN_REPORT_TIMEOUT_S = 5.0  # one write of a report to the controller; retried
JOIN_REPORT_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class ReplicationWiring:
    """What the engine needs from the node (node.py) to run replicas in a cluster."""

    host: ReplicaHost  # where peers' messages find this node's replicas
    outbox: Outbox  # where replicas send theirs (the PeerTransport)
    assignment: Callable[[str, str], ShardAssignment | None]  # the shards/ document
    lease_valid: Callable[[], bool]  # this node's membership lease may still hold
    refresh_ids: Callable[[], None]  # learn the nodes' addresses again (replica id -> node)
    live_nodes: Callable[[], int]  # nodes registered now (a default RF is at most that)
    report_to_controller: Callable[
        [JoinReport], Awaitable[None]
    ]  # write a join report to the store


def replica_dir(shard_directory: Path) -> Path:
    return shard_directory / "replica"


def replica_log_dir(data_dir: Path, stream_id: str, shard_id: str) -> Path:
    """Where a node keeps its replica's log of one shard (for tools and offline checks)."""
    return replica_dir(layout.shard_dir(layout.stream_dir(data_dir, stream_id), shard_id)) / "log"


def lead_epoch(term: int, persisted: int) -> int | None:
    """The core epoch to lead controller term ``term`` with, given the replica's persisted
    epoch; None when none is left (the replica saw a later term, or restarted 1,023 times)."""
    first, after = term << EPOCH_TERM_SHIFT, (term + 1) << EPOCH_TERM_SHIFT
    if persisted < first:
        return first
    if persisted + 1 < after:
        return persisted + 1
    return None


@dataclass(slots=True)
class ReplicatedWrite:
    """A write on the leader's replica; ``wait`` as ``PendingWrite.wait``. Begun at once when
    the replica serves (so writes to several shards commit in parallel), else in ``wait``,
    once the replica serves (a leader still fencing or catching up)."""

    shard: ReplicatedShard
    record_count: int
    batch: StoredBatch
    write_id: int | None = None

    async def wait(self) -> tuple[int, int, bool]:
        """(base offset, record count, duplicate) once committed on a majority."""
        shard, driver = self.shard, self.shard.driver
        try:
            if self.write_id is None:
                if not await driver.wait_serving(SERVING_WAIT_S):
                    raise shard._not_serving()
                shard.check_writable()  # sealed meanwhile: never begun, so never past the end
                self.write_id = driver.begin_write(self.batch)
            done = await driver.wait_write(self.write_id)
        finally:
            shard.writes_finished(1)
        if not done.duplicate:  # node_stats (streamd top): bytes as stored, not as Kinesis counts
            shard.counters.incoming_records += self.record_count
            shard.counters.incoming_bytes += len(self.batch.payload)
        return done.base_offset, self.record_count, done.duplicate


class ReplicatedShard:
    def __init__(
        self,
        stream: str,
        shard: ShardMeta,
        directory: Path,
        store: FileLogStore,
        node_id: str,
        outbox: Outbox,
        clock: Clock,
        *,
        replica_config: ReplicaConfig | None = None,
        driver_config: DriverConfig | None = None,
    ) -> None:
        """``directory``: the replica's (``replica_dir``), ``store`` its log, open."""
        self.stream = stream
        self.shard = shard
        self.directory = directory
        self.node_id = node_id
        self.clock = clock
        self.store: FileLogStore | None = store
        self.driver = ReplicaDriver(
            stream,
            shard.shard_id,
            replica_id_of(node_id),
            store,
            MetaFile(directory),
            outbox,
            replica_config=replica_config,
            config=driver_config,
        )
        self._led_term = 0  # the controller term this replica was last asked to lead
        self._led: ShardAssignment | None = None  # the document it was asked to lead by
        # Set by the engine in cluster mode: where this replica's leader reports a joining
        # member caught up (the controller then makes it a voter).
        self.report_to_controller: Callable[[JoinReport], Awaitable[None]] | None = None
        self._declined: DeclineReport | None = None  # a declined term, to report
        self._report_due = trio.Event()
        self.driver.on_joiner_caught_up = self._wake_reporter
        # Resharding. ``reshard_id``: the stream's reshard under way (the engine keeps it). A
        # seal refuses new writes; a replica that starts leading while a reshard is under way
        # refuses them until that reshard ends (``_lead_fence``): a seal its predecessor took
        # may be about to close the shard at an end this leader never saw.
        self.reshard_id: str | None = None
        self._lead_fence: str | None = None
        self._sealed = False
        self._writes = 0  # writes made, not yet answered (a seal waits for them)
        self._writes_done = trio.Event()
        self._tip_ms = 0  # arrival time of the newest record written through this node
        # Encryption at rest: the leader seals the stored batch it makes (so every replica
        # stores and ships the same ciphertext) and opens batches for readers; set by the
        # engine as on ShardPipeline.
        self.keys: at_rest.KeySource | None = None
        self.key_id_of: Callable[[], str | None] = lambda: None
        self.counters = ShardCounters()  # what node_stats reports while this node leads it
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._log = log.bind(stream=stream, shard=shard.shard_id)

    @classmethod
    async def open(
        cls,
        stream: str,
        shard: ShardMeta,
        shard_directory: Path,
        node_id: str,
        outbox: Outbox,
        log_config: LogConfig,
        clock: Clock,
        **kwargs: Any,
    ) -> ReplicatedShard:
        """Open (recover) the replica's log in a worker thread, then build the shard."""
        directory = replica_dir(shard_directory)
        config = LogConfig(
            segment_bytes_max=log_config.segment_bytes_max,
            segment_age_ms_max=log_config.segment_age_ms_max,
            fsync=True,  # a replica's vote is a durable batch: never without fsync
        )

        def opened() -> FileLogStore:
            directory.mkdir(parents=True, exist_ok=True)
            return FileLogStore(directory / "log", config)

        store = await trio.to_thread.run_sync(opened)
        return cls(stream, shard, directory, store, node_id, outbox, clock, **kwargs)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the replica until ``close`` (or cancelled); the log is closed on the way out."""
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._run_driver, nursery.cancel_scope)
                    nursery.start_soon(self._report_joiners)
                    task_status.started()
        except Exception as exc:  # broken: this node must not serve the shard (logged)
            self._log.error("replicated.stopped_broken", error=repr(exc))
        finally:
            store, self.store = self.store, None
            if store is not None:
                store.close(clean=self.driver.broken is None)
            self._stopped.set()

    async def _run_driver(self, done: trio.CancelScope, *, task_status: Any) -> None:
        await self.driver.run(task_status=task_status)
        done.cancel()  # the driver stopped (closed): so does the reporter

    async def _report_joiners(self) -> None:
        """Report to the controller what only this replica knows: each joining member its
        leadership found caught up (the driver's ``JoinerCaughtUp``), as ``joined/``, and a
        term it declined to lead, as ``declined/``; each retried until written."""
        reported: set[tuple[int, int]] = set()
        while True:
            with trio.move_on_after(JOIN_REPORT_RETRY_S):
                await self._report_due.wait()
            self._report_due = trio.Event()
            declined, self._declined = self._declined, None
            if declined is not None and not await self._report(declined):
                self._declined = self._declined or declined  # again, unless a newer one
            for replica, epoch in sorted(self.driver.caught_up - reported):
                report = self._join_report(replica, epoch)
                if report is None or await self._report(report):
                    reported.add((replica, epoch))  # None: an older term's, or not joining

    def _wake_reporter(self) -> None:
        self._report_due.set()  # the current event: the reporter replaces it after each wake

    async def _report(self, report: JoinReport) -> bool:
        if self.report_to_controller is None:
            return True
        try:
            with trio.fail_after(JOIN_REPORT_TIMEOUT_S):
                await self.report_to_controller(report)
        except (trio.TooSlowError, StreamdError, MetaError) as exc:
            self._log.warning("replicated.report_failed", key=report.key, error=str(exc))
            return False  # again after JOIN_REPORT_RETRY_S
        self._log.info("replicated.reported", key=report.key, node=report.node_id, term=report.term)
        return True

    def _join_report(self, replica: int, epoch: int) -> JoinReport | None:
        """The report on a joiner caught up in core ``epoch``: None unless that is this
        replica's current leadership and the replica still joins in it."""
        led, term = self._led, epoch >> EPOCH_TERM_SHIFT
        if led is None or term != led.leader_epoch:
            return None
        node = next((n for n in led.joining if replica_id_of(n) == replica), None)
        return None if node is None else JoinReport(self.stream, self.shard.shard_id, node, term)

    async def close(self, timeout_s: float = 10.0) -> None:
        if self._scope is not None:
            self._scope.cancel()
            with trio.move_on_after(timeout_s):
                await self._stopped.wait()

    # -- leadership ---------------------------------------------------------------------------

    def follow_assignment(self, assignment: ShardAssignment, lease_valid: bool) -> None:
        """Lead when the controller's document names this node leader at a term not led yet."""
        term = assignment.leader_epoch
        if (
            assignment.status != "ok"
            or assignment.leader != self.node_id
            or not lease_valid
            or term <= self._led_term
            or not self.driver.running
        ):
            return
        self._led_term, self._led = term, assignment
        # Term 1 is the shard's first leader (a new stream's, or a reshard's child): nobody
        # before it can have been sealed.
        self._lead_fence = self.reshard_id if term > 1 else None
        epoch = lead_epoch(term, self.driver.epoch)
        if epoch is None:
            self._log.error("replicated.no_epoch_left", term=term, persisted=self.driver.epoch)
            self._declined = DeclineReport(self.stream, self.shard.shard_id, self.node_id, term)
            self._wake_reporter()
            return
        replicas = tuple(replica_id_of(n) for n in assignment.replicas)
        joining = tuple(replica_id_of(n) for n in assignment.joining)
        declined = self.driver.lead(epoch, replicas, joining)
        if declined is not None:  # the controller names another voter (decisions.py)
            self._declined = DeclineReport(self.stream, self.shard.shard_id, self.node_id, term)
            self._wake_reporter()
        self._log.info(
            "replicated.lead",
            term=term,
            epoch=epoch,
            joining=list(assignment.joining),
            declined=declined,
        )

    # -- writes ---------------------------------------------------------------------------------

    def enqueue_records(
        self, keys: list[str], hashes: list[bytes], datas: list[bytes]
    ) -> ReplicatedWrite:
        self._check_open()
        now = self.clock.now_ms()
        data = batchfmt.encode_batch(
            keys,
            hashes,
            datas,
            base_offset=0,
            leader_epoch=0,
            first_arrival_ms=now,
            last_arrival_ms=now,
        )
        self._tip_ms = now
        data = self._at_rest(data)
        return self._begin(ReplicatedWrite(self, len(keys), make_batch(0, len(keys), 0, data)))

    def enqueue_batch(self, data: bytes, header: batchfmt.BatchHeader) -> ReplicatedWrite:
        self._check_open()
        now = self.clock.now_ms()
        stamped = batchfmt.restamp(
            data, base_offset=0, leader_epoch=0, first_arrival_ms=now, last_arrival_ms=now
        )
        self._tip_ms = now
        batch = make_batch(
            0,
            header.record_count,
            0,
            self._at_rest(stamped),
            producer_id=header.producer_id,
            producer_seq=header.producer_seq,
        )
        return self._begin(ReplicatedWrite(self, header.record_count, batch))

    def _at_rest(self, data: bytes) -> bytes:
        """The stored form of a new batch: sealed when the stream is encrypted. Raises
        InternalError if the keyring lost the stream's key (a reload) or this node has none:
        an encrypted stream never gets a batch in plaintext."""
        key_id = self.key_id_of()
        if key_id is None:
            return data
        if self.keys is None:
            raise InternalError(f"cannot encrypt with {key_id!r}: this node has no --keyring")
        try:
            return at_rest.seal(data, self.keys, key_id)
        except LookupError as exc:
            raise InternalError(f"cannot encrypt: {exc}") from None

    def _keys_to_open(self) -> at_rest.KeySource:
        if self.keys is None:  # this node runs without --keyring: say so, serve nothing sealed
            raise at_rest.KeyUnavailableError(
                f"shard {self.shard.shard_id} of {self.stream!r} holds encrypted batches and "
                "this node has no --keyring"
            )
        return self.keys

    def _begin(self, write: ReplicatedWrite) -> ReplicatedWrite:
        if self.driver.serving():
            write.write_id = self.driver.begin_write(write.batch)
        return write

    def _check_open(self) -> None:
        self.check_writable()
        self._writes += 1

    def writes_finished(self, count: int) -> None:
        self._writes -= count
        assert self._writes >= 0
        if not self._writes:
            self._writes_done.set()
            self._writes_done = trio.Event()

    def check_writable(self) -> None:
        """Raises ShardClosedError (closed, sealed, or fenced by a reshard: the engine routes
        the records again once the reshard's switch or undo is known), ShardUnavailableError."""
        fenced = self._lead_fence is not None and self._lead_fence == self.reshard_id
        if self._sealed or fenced:
            raise ShardClosedError(
                f"shard {self.shard.shard_id} is being resharded", shard_id=self.shard.shard_id
            )
        if not self.shard.is_open:
            raise ShardClosedError(
                f"shard {self.shard.shard_id} is closed", shard_id=self.shard.shard_id
            )
        if not self.driver.running:
            raise ShardUnavailableError(
                f"shard {self.shard.shard_id} of {self.stream!r} is not running here",
                stream=self.stream,
                shard_id=self.shard.shard_id,
            )

    # -- resharding ---------------------------------------------------------------------------

    async def seal(self, timeout_s: float) -> int:
        """Refuse new writes, wait for those under way, then commit a control batch in this
        leader's epoch: it commits only while this replica leads a majority (a deposed leader
        fails here, NOT_LEADER), so every acknowledged write lies below the ending offset it
        returns, and a later leader was elected after the seal (and fences itself: see
        ``_lead_fence``). ``unseal`` undoes it. Raises RequestTimeoutError, NotLeaderError,
        ShardUnavailableError; the shard stays sealed either way (the caller unseals)."""
        assert self.shard.is_open
        self._sealed = True
        try:
            with trio.fail_after(timeout_s):
                while self._writes:
                    await self._writes_done.wait()
                marker = make_batch(0, 1, 0, b"", control=True)
                done = await self.driver.write(marker, timeout_s=timeout_s)
        except trio.TooSlowError:
            raise RequestTimeoutError(
                f"shard {self.shard.shard_id}'s writes did not finish in {timeout_s} s"
            ) from None
        return done.base_offset + 1

    def unseal(self) -> None:
        self._sealed = False

    def adopt(self, shard: ShardMeta) -> None:
        """The catalog's version of this shard (closed by a reshard's switch: its seal ends)."""
        assert shard.shard_id == self.shard.shard_id
        if self.shard.is_open and not shard.is_open:
            self._sealed = False
        self.shard = shard

    close_shard = adopt

    def _not_serving(self) -> ShardUnavailableError:
        """A replica told to lead that does not serve yet (fencing, catching up): retryable."""
        return ShardUnavailableError(
            f"shard {self.shard.shard_id} of {self.stream!r}: its new leader is not serving yet",
            stream=self.stream,
            shard_id=self.shard.shard_id,
        )

    def sequence_of(self, offset: int) -> str:
        return make_sequence(self.shard.index, offset)

    # -- reads ----------------------------------------------------------------------------------

    async def read(
        self, position: Position, max_bytes: int, wait_ms: int, *, counted: bool = True
    ) -> ReadResult:
        """Committed batches from ``position``, as the pipeline's ``read`` answers (``counted``
        False: a lag probe, left out of the read metrics). Raises NotLeaderError,
        ShardUnavailableError, InvalidSequenceNumberError."""
        driver = self.driver
        if not driver.serving() and not await driver.wait_serving(SERVING_WAIT_S):
            raise self._not_serving()
        offset = await self._resolve(position)
        if offset >= driver.hw and wait_ms > 0:
            await driver.wait_for_hw(offset, wait_ms / 1000)
        stored, hw = await driver.read(offset, READ_BATCHES_MAX)
        ending = self.shard.ending_offset
        if ending is not None:  # closed: what lies past the end was never acknowledged
            hw = min(hw, ending)
            stored = tuple(sb for sb in stored if sb.next_offset <= ending)
        batches: list[bytes] = []
        size, next_offset, last_ms = 0, offset, 0
        for sb in stored:
            if sb.next_offset <= offset:
                continue
            if sb.control:
                if batches:  # a page has no gap after its first record: end it here
                    break
                next_offset = sb.next_offset
                continue
            header = batchfmt.parse_header(sb.payload)
            if batches and size + len(sb.payload) > max_bytes:
                break
            stamped = batchfmt.restamp(
                sb.payload,
                base_offset=sb.base_offset,
                leader_epoch=sb.epoch,
                first_arrival_ms=header.first_arrival_ms,
                last_arrival_ms=header.last_arrival_ms,
            )
            if at_rest.is_sealed(stamped):  # readers get plaintext; CorruptDataError if damaged
                stamped = at_rest.unseal(stamped, self._keys_to_open())
            batches.append(stamped)
            size += len(sb.payload)
            next_offset, last_ms = sb.next_offset, header.last_arrival_ms
        tip_ms = max(self._tip_ms, last_ms)
        next_offset = max(next_offset, offset)
        if counted and batches:
            metrics.RECORDS_READ.labels(self.stream).inc(next_offset - offset)
            metrics.BYTES_READ.labels(self.stream).inc(size)
            self.counters.outgoing_records += next_offset - offset
            self.counters.outgoing_bytes += size
        return ReadResult(
            batches,
            offset,
            next_offset,
            hw,
            millis_behind(tip_ms, last_ms, next_offset, hw),
            shard_end=ending is not None and next_offset >= ending,
            tip_arrival_ms=tip_ms,
        )

    async def _resolve(self, position: Position) -> int:
        hw = self.driver.hw
        kind = position.kind
        if kind == "trim_horizon":
            return 0
        if kind == "latest":
            return hw
        if kind == "at_timestamp":
            assert position.timestamp_ms is not None
            return await self._offset_for_timestamp(position.timestamp_ms, hw)
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
        if offset > hw:
            raise InvalidSequenceNumberError(
                f"position {offset} lies beyond the shard's tip {hw}", high_watermark=hw
            )
        return offset

    async def _offset_for_timestamp(self, timestamp_ms: int, hw: int) -> int:
        """The first committed offset whose batch arrived at or after ``timestamp_ms``."""
        offset = 0
        while offset < hw:
            stored, hw = await self.driver.read(offset, TIMESTAMP_SCAN_BATCHES)
            if not stored:
                break
            for sb in stored:
                if not sb.control and (
                    batchfmt.parse_header(sb.payload).last_arrival_ms >= timestamp_ms
                ):
                    return max(sb.base_offset, offset)
                offset = sb.next_offset
        return hw
